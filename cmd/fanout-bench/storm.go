package main

// The reconnect storm (-storm-clients N): N clients that resume at once,
// each behind by -storm-missed events, while other users receive a steady
// stream of live events.
//
//  1. Connect the live clients (-users × -conns-per-user, users u0..) and
//     the storm clients (N, users s0..s(-storm-users − 1)), all offering
//     fanout.v1, and start publishing live events at -rate, round-robin
//     over the live users, until the end.
//  2. Warm-up: one event (sequence 1) to each storm user; each storm client
//     keeps the id it gets.
//  3. Away: the storm clients close (close frame 1000). -storm-missed
//     events (sequences 2..) are published to each storm user with plain
//     PUBLISH, as fast as the daemon records them (at most 10 000 events
//     ahead of what its history holds, so its pub/sub output buffer in
//     Redis stays far below the 32 MB at which Redis would drop it), then
//     the bench waits until every storm user's history holds them all.
//  4. Baseline: live latency over -storm-baseline, machine otherwise quiet.
//  5. Storm: every storm client dials again with
//     ?last_event_id=<its last id> (-storm-dial-concurrency at a time); it
//     is live once it holds all its user's events (the warm-up one and the
//     missed ones, none twice). "All live" is the time from the command to
//     the last client caught up; live events published meanwhile are
//     timed apart (ph 2).
//  6. Live events go on for -storm-after, then everything is drained and
//     checked: no loss, no duplicate, no resync, ids increasing.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"fanout/history"

	"github.com/redis/go-redis/v9"
)

// stormResult is what the storm scenario measures besides the common
// report fields.
type stormResult struct {
	Clients          int      `json:"clients"`
	Users            int      `json:"users"`
	Missed           int      `json:"missed_per_user"`
	Connected        int      `json:"connected"`
	LiveConnections  int      `json:"live_connections"`
	LiveRate         float64  `json:"live_rate"`
	AwayEvents       int64    `json:"away_events"`
	AwaySeconds      float64  `json:"away_seconds"`  // publishing the missed events until all were in the history
	HistoryShort     int      `json:"history_short"` // storm users whose history lacked events before the storm
	NoID             int      `json:"no_id"`         // storm clients that had no id to resume from
	Reconnected      int      `json:"reconnected"`
	ReconnectFail    int      `json:"reconnect_failures"`
	ReconnectErrors  []string `json:"reconnect_errors,omitempty"`
	ReconnectSeconds float64  `json:"reconnect_seconds"` // until the last dial returned
	CaughtUp         int64    `json:"caught_up"`
	AllLive          bool     `json:"all_live"`
	AllLiveSeconds   float64  `json:"all_live_seconds"`
	CatchUpP50us     float64  `json:"catch_up_p50_us"` // per client, from the reconnect command
	CatchUpP99us     float64  `json:"catch_up_p99_us"`
	CatchUpMaxus     float64  `json:"catch_up_max_us"`
	Baseline         latency  `json:"baseline"` // live events over -storm-baseline before the storm
	During           latency  `json:"during"`   // live events published during the storm
	DaemonCPUus      float64  `json:"daemon_cpu_us"`
	DaemonCPUPercent float64  `json:"daemon_cpu_percent"`
	RedisCPUus       float64  `json:"redis_cpu_us"`
	RedisCPUPercent  float64  `json:"redis_cpu_percent"`
	// BenchCPUPercent is the generator's own CPU (parent and children)
	// over the storm: dialing and reading the catch-ups on the same cores.
	BenchCPUPercent float64 `json:"bench_cpu_percent"`
}

func (st *stormResult) failed() []string {
	var why []string
	if !st.AllLive {
		why = append(why, fmt.Sprintf("only %d of %d storm clients caught up", st.CaughtUp, st.Connected))
	}
	if st.ReconnectFail != 0 || st.NoID != 0 {
		why = append(why, fmt.Sprintf("%d storm clients could not resume (%d without an id)", st.ReconnectFail, st.NoID))
	}
	if st.HistoryShort != 0 {
		why = append(why, fmt.Sprintf("%d storm users' histories lacked events", st.HistoryShort))
	}
	return why
}

// awayWindow is how many missed events may be published ahead of what the
// history holds (about 3 MB of 256-byte events in the daemon's pub/sub
// output buffer).
const awayWindow = 10000

func runStorm(o options) (*report, error) {
	liveTotal := o.users * o.connsPerUser
	stormProcs := (o.stormClients + 14999) / 15000
	rep := &report{Scenario: o.scenario, Users: o.users, ConnsPerUser: o.connsPerUser, Procs: o.procs + stormProcs,
		Sources: o.sources, ConnsRequested: liveTotal + o.stormClients, Payload: o.payload, Rate: o.rate,
		Subprotocol: o.subprotocol}
	st := &stormResult{Clients: o.stormClients, Users: o.stormUsers, Missed: o.stormMissed, LiveRate: o.rate}
	rep.Storm = st
	pids, err := parsePIDs(o.pids)
	if err != nil {
		return nil, err
	}
	if len(pids) == 0 {
		rep.Notes = append(rep.Notes, "no -pid: daemon RSS and CPU not measured")
	}
	rep.RSSBaseBytes = rss(pids)

	rdb := redis.NewClient(&redis.Options{Addr: o.redis, PoolSize: 2*o.publishers + 4})
	defer rdb.Close()
	ctx := context.Background()
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = rdb.Ping(pctx).Err()
	cancel()
	if err != nil {
		return nil, fmt.Errorf("redis %s: %w", o.redis, err)
	}
	liveUsers, stormUsers := userNames("u", o.users), userNames("s", o.stormUsers)

	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	liveTr, stormTr := newTracker(), newTracker()
	defer func() { reap(append(liveTr.children, stormTr.children...)) }()
	start := time.Now()
	for i := 0; i < o.procs; i++ {
		cfg := childConfig{URLs: o.urls(), Subprotocol: o.subprotocol, UserPrefix: "u", Users: o.users,
			Sources: o.sources, Lo: liveTotal * i / o.procs, Hi: liveTotal * (i + 1) / o.procs,
			DialWorkers: max(1, o.dialWorkers/(o.procs+stormProcs)), Timeout: o.timeout, MaxLife: o.maxLife()}
		if _, err := spawn(self, cfg, liveTr); err != nil {
			return nil, err
		}
	}
	for i := 0; i < stormProcs; i++ {
		cfg := childConfig{URLs: o.urls(), Subprotocol: o.subprotocol, UserPrefix: "s", Users: o.stormUsers,
			Sources: o.sources, Lo: o.stormClients * i / stormProcs, Hi: o.stormClients * (i + 1) / stormProcs,
			DialWorkers: max(1, o.dialWorkers/(o.procs+stormProcs)), Timeout: o.timeout, MaxLife: o.maxLife(),
			StormTarget: int64(1 + o.stormMissed), ReconnectWorkers: max(1, o.stormDialWorkers/stormProcs)}
		if _, err := spawn(self, cfg, stormTr); err != nil {
			return nil, err
		}
	}

	// Connect phase.
	liveConns := perUser(liveTotal, o.users)
	stormConns := perUser(o.stormClients, o.stormUsers)
	deadline := time.After(o.timeout + 15*time.Second)
	for g, kids := range [][]*child{liveTr.children, stormTr.children} {
		for _, c := range kids {
			select {
			case m := <-c.connected:
				rep.Connections += m.OK
				rep.ConnectFailures += m.Fail
				for _, gi := range m.Failed {
					if g == 0 {
						liveConns[gi%o.users]--
					} else {
						stormConns[gi%o.stormUsers]--
					}
				}
				for _, e := range m.Errs {
					if len(rep.ConnectErrors) < 5 {
						rep.ConnectErrors = append(rep.ConnectErrors, e)
					}
				}
				if g == 0 {
					st.LiveConnections += m.OK
				} else {
					st.Connected += m.OK
				}
			case <-deadline:
				return rep, errors.New("connect phase: a child did not report in time")
			}
		}
	}
	rep.ConnectSeconds = time.Since(start).Seconds()
	rep.UpgradesPerSec = float64(rep.Connections) / rep.ConnectSeconds
	if st.Connected == 0 {
		return rep, errors.New("no storm client connected")
	}
	idle0, idleT0 := cpuTicksAll(pids), time.Now()
	time.Sleep(o.settle)
	rep.RSSConnectedBytes = rss(pids)
	if len(pids) > 0 && o.settle > 0 {
		rep.DaemonIdleCPUPercent = float64(cpuTicksAll(pids)-idle0) * 1e6 / clkTck / 1e4 / time.Since(idleT0).Seconds()
	}
	if len(pids) > 0 && rep.Connections > 0 {
		rep.RSSPerConnBytes = float64(rep.RSSConnectedBytes-rep.RSSBaseBytes) / float64(rep.Connections)
	}

	allUsers := append(append([]string(nil), liveUsers...), stormUsers...)
	mem0 := redisMemory(rdb)
	entries0, _ := historyEntries(rdb, allUsers, classicKeys)
	base, err := historyLens(rdb, stormUsers, classicKeys)
	if err != nil {
		return rep, err
	}
	benchCPU0 := benchTicks(append(liveTr.children, stormTr.children...))
	windowStartNs.Store(time.Now().UnixNano())

	// Live events, from now to the end.
	lp := &livePublisher{rdb: rdb, users: liveUsers, connsOf: liveConns, rate: o.rate, payload: o.payload,
		stop: make(chan struct{})}
	lp.phase.Store(phaseOther)
	lp.start(min(o.publishers, o.users))
	stopLive := sync.OnceFunc(func() { close(lp.stop); lp.wg.Wait() })
	defer stopLive()

	// Warm-up: one event per storm user; each client keeps its id.
	var stormExpected int64
	for _, n := range stormConns {
		stormExpected += n
	}
	pub, errs := publishBurst(rdb, stormUsers, 1, 1, o.payload, o.publishers, nil, time.Now().Add(o.timeout))
	rep.EventsPublished += pub
	rep.PublishErrors += errs
	if !stormTr.waitFor(func() bool { return stormTr.delivered.Load() >= stormExpected }, time.Now().Add(o.timeout)) {
		return rep, fmt.Errorf("warm-up: %d of %d storm clients got their first event", stormTr.delivered.Load(), stormExpected)
	}
	if lens, err := historyLens(rdb, stormUsers, classicKeys); err != nil || sum(lens) == sum(base) {
		return rep, errors.New("warm-up: the events were delivered but not recorded: the storm needs the daemon's HISTORY=on")
	}

	// Away.
	command(stormTr.children, "disconnect")
	for _, c := range stormTr.children {
		select {
		case m := <-c.disconnected:
			st.NoID += m.NoID
		case <-time.After(o.timeout):
			return rep, errors.New("away: a storm child did not close its connections in time")
		}
	}
	t0 := time.Now()
	awayDeadline := t0.Add(3 * o.timeout)
	// gate: event j of the burst (user j % U, sequence 2 + j/U) is in its
	// user's history. The daemon records in the order Redis delivers, so
	// a recorded event j says the ones before it are recorded too.
	gate := func(j int) bool {
		u := j % len(stormUsers)
		n, err := rdb.XLen(ctx, history.HistoryKey(stormUsers[u])).Result()
		return err == nil && n >= base[u]+1+int64(1+j/len(stormUsers))
	}
	pub, errs = publishBurst(rdb, stormUsers, 2, o.stormMissed, o.payload, o.publishers, gate, awayDeadline)
	st.AwayEvents = pub
	rep.EventsPublished += pub
	rep.PublishErrors += errs
	want := int64(1 + o.stormMissed)
	for {
		lens, err := historyLens(rdb, stormUsers, classicKeys)
		if err != nil {
			return rep, err
		}
		st.HistoryShort = 0
		for u, n := range lens {
			if n < base[u]+want {
				st.HistoryShort++
			}
		}
		if st.HistoryShort == 0 || time.Now().After(awayDeadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	st.AwaySeconds = time.Since(t0).Seconds()
	rep.measureHistory(rdb, func() int64 { return redisMemory(rdb) }, allUsers, classicKeys, mem0, entries0)
	// Missed events per storm user: the ones published.
	stormExpected += int64(o.stormMissed) * stormExpected

	// Baseline.
	lp.phase.Store(1)
	time.Sleep(o.stormBaseline)

	// Storm.
	kids := append(append([]*child(nil), liveTr.children...), stormTr.children...)
	cpu0, rcpu0, bcpu0 := cpuTicksAll(pids), redisCPU(rdb), benchTicks(kids)
	lp.phase.Store(2)
	t1 := time.Now()
	command(stormTr.children, "reconnect")
	st.AllLive = stormTr.waitFor(func() bool { return stormTr.caughtUp.Load() >= int64(st.Connected) }, t1.Add(2*o.timeout))
	stormSecs := time.Since(t1).Seconds()
	lp.phase.Store(phaseOther)
	cpu1, rcpu1, bcpu1 := cpuTicksAll(pids), redisCPU(rdb), benchTicks(kids)
	st.BenchCPUPercent = float64(bcpu1-bcpu0) * 1e6 / clkTck / 1e4 / stormSecs
	st.CaughtUp = stormTr.caughtUp.Load()
	if st.AllLive {
		st.AllLiveSeconds = stormSecs
	}
	st.DaemonCPUus = float64(cpu1-cpu0) * 1e6 / clkTck
	st.DaemonCPUPercent = st.DaemonCPUus / 1e4 / stormSecs
	if rcpu0 >= 0 && rcpu1 >= 0 {
		st.RedisCPUus = rcpu1 - rcpu0
		st.RedisCPUPercent = st.RedisCPUus / 1e4 / stormSecs
	}
	for _, c := range stormTr.children {
		select {
		case m := <-c.reconnected:
			st.Reconnected += m.OK
			st.ReconnectFail += m.Fail
			st.ReconnectSeconds = max(st.ReconnectSeconds, m.Secs)
			for _, e := range m.Errs {
				if len(st.ReconnectErrors) < 5 {
					st.ReconnectErrors = append(st.ReconnectErrors, e)
				}
			}
		case <-time.After(o.timeout + 15*time.Second):
			return rep, errors.New("storm: a child did not report its reconnects in time")
		}
	}

	// After: live events go on a while, then everything drains.
	time.Sleep(o.stormAfter)
	stopLive()
	rep.EventsPublished += lp.published.Load()
	rep.PublishErrors += lp.errs.Load()
	liveExpected := lp.expected.Load()
	rep.Expected = liveExpected + stormExpected
	rep.Drained = liveTr.waitFor(func() bool { return liveTr.delivered.Load() >= liveExpected }, time.Now().Add(o.timeout)) &&
		stormTr.waitFor(func() bool { return stormTr.delivered.Load() >= stormExpected }, time.Now().Add(o.timeout))
	if !rep.Drained {
		rep.Notes = append(rep.Notes, "drain hit -timeout: some deliveries never arrived")
	}
	if rep.PublishErrors > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d PUBLISH errors", rep.PublishErrors))
	}

	command(kids, "stop")
	benchTicksEnd := cpuTicks(os.Getpid())
	hist, _, childTicks, err := collect(kids, rep)
	if err != nil {
		return rep, err
	}
	benchTicksEnd += childTicks
	rep.Losses = rep.Expected - rep.Deliveries
	rep.RSSEndBytes = rss(pids)
	st.Baseline = latencyOf(&hist[histPhase1], lp.perPhase[1].Load())
	st.During = latencyOf(&hist[histPhase2], lp.perPhase[2].Load())
	st.Baseline.WindowSeconds, st.During.WindowSeconds = o.stormBaseline.Seconds(), stormSecs
	cu := &hist[histCatchUp]
	st.CatchUpP50us, st.CatchUpP99us, st.CatchUpMaxus = us(cu.percentile(0.5)), us(cu.percentile(0.99)), us(cu.max)
	// The headline latency is the live events' during the storm.
	rep.LatP50us, rep.LatP99us, rep.LatP999us, rep.LatMaxus = st.During.P50us, st.During.P99us, st.During.P999us, st.During.Maxus
	rep.WindowSeconds = stormSecs
	rep.DaemonCPUus, rep.DaemonCPUPercent = st.DaemonCPUus, st.DaemonCPUPercent
	if start := windowStartNs.Load(); start > 0 {
		secs := float64(time.Now().UnixNano()-start) / 1e9
		rep.BenchCPUPercent = float64(benchTicksEnd-benchCPU0) * 1e6 / clkTck / 1e4 / secs
	}
	return rep, nil
}

// phaseOther tags events that are neither baseline nor storm: not timed.
const phaseOther = 3

// perUser returns the connections of each of users when connection i
// watches user i % users.
func perUser(conns, users int) []int64 {
	n := make([]int64, users)
	for i := 0; i < conns; i++ {
		n[i%users]++
	}
	return n
}

func sum(v []int64) int64 {
	var s int64
	for _, x := range v {
		s += x
	}
	return s
}

func latencyOf(h *histogram, events int64) latency {
	return latency{Events: events, Deliv: h.total, P50us: us(h.percentile(0.5)), P99us: us(h.percentile(0.99)),
		P999us: us(h.percentile(0.999)), Maxus: us(h.max)}
}

// publishBurst publishes count events to each of users as fast as Redis
// takes them: event k goes to user k % len(users) with sequence
// first + k/len(users), "ph" phaseOther; workers publish pipelined, a
// user's events always through the same worker, in order. When gate is
// set, a worker about to publish event k waits (polling every 2 ms) until
// gate(k − awayWindow) holds. It gives up at deadline.
func publishBurst(rdb *redis.Client, users []string, first, count, payload, workers int, gate func(int) bool, deadline time.Time) (published, errs int64) {
	var pubN, errN atomic.Int64
	total := len(users) * count
	var wg sync.WaitGroup
	for w := 0; w < workers && w < len(users); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			pipe := rdb.Pipeline()
			pending := 0
			flush := func() {
				if pending == 0 {
					return
				}
				cmds, _ := pipe.Exec(ctx)
				for _, cmd := range cmds {
					if cmd.Err() != nil {
						errN.Add(1)
					} else {
						pubN.Add(1)
					}
				}
				pending = 0
			}
			defer flush()
			for k := 0; k < total; k++ {
				u := k % len(users)
				if u%workers != w {
					continue
				}
				if time.Now().After(deadline) {
					return
				}
				if gate != nil && pending == 0 && k >= awayWindow {
					for !gate(k-awayWindow) && time.Now().Before(deadline) {
						time.Sleep(2 * time.Millisecond)
					}
				}
				ev := appendEvent(make([]byte, 0, payload+128), users[u], int64(first+k/len(users)), time.Now().UnixNano(), phaseOther, payload)
				pipe.Publish(ctx, history.Channel(users[u]), ev)
				if pending++; pending >= pipelineMax {
					flush()
				}
			}
		}()
	}
	wg.Wait()
	return pubN.Load(), errN.Load()
}

// livePublisher publishes events at a steady rate, round-robin over its
// users, until stop is closed; each is tagged with the phase current when
// it is sent. Worker w publishes the users u with u % workers == w, one
// event at a time, so each user's events are in order.
type livePublisher struct {
	rdb     *redis.Client
	users   []string
	connsOf []int64
	rate    float64
	payload int

	phase                     atomic.Int64
	perPhase                  [4]atomic.Int64
	published, expected, errs atomic.Int64
	stop                      chan struct{}
	wg                        sync.WaitGroup
}

func (lp *livePublisher) start(workers int) {
	t0 := time.Now()
	n := len(lp.users)
	for w := 0; w < workers; w++ {
		lp.wg.Add(1)
		go func() {
			defer lp.wg.Done()
			ctx := context.Background()
			timer := time.NewTimer(time.Hour)
			defer timer.Stop()
			buf := make([]byte, 0, lp.payload+128)
			for k := 0; ; k++ {
				u := k % n
				if u%workers != w {
					continue
				}
				at := t0.Add(time.Duration(float64(k) / lp.rate * float64(time.Second)))
				if d := time.Until(at); d > 0 {
					timer.Reset(d)
					select {
					case <-lp.stop:
						return
					case <-timer.C:
					}
				} else {
					select {
					case <-lp.stop:
						return
					default:
					}
				}
				ph := lp.phase.Load()
				buf = appendEvent(buf[:0], lp.users[u], int64(k/n+1), time.Now().UnixNano(), int(ph), lp.payload)
				if err := lp.rdb.Publish(ctx, history.Channel(lp.users[u]), buf).Err(); err != nil {
					lp.errs.Add(1)
					continue
				}
				lp.perPhase[ph].Add(1)
				lp.published.Add(1)
				lp.expected.Add(lp.connsOf[u])
			}
		}()
	}
}
