package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"fanout/history"

	"fanout/internal/testproc"
	"fanout/presence"
)

// The drain tests of issue 12: real fanout processes (SIGTERM is a real
// signal) behind deploy/nginx.conf run by Debian's nginx, and clients that
// reconnect as fanout-client.js does.

// drainModes are the SUBSCRIBE_MODE values the drain tests run with: ""
// leaves the variable unset (pattern, the default).
var drainModes = []string{"", "user"}

// drainModeName names a subtest after mode.
func drainModeName(mode string) string {
	if mode == "" {
		return "pattern"
	}
	return mode
}

// drainModeEnv is the process environment for mode.
func drainModeEnv(mode string) []string {
	if mode == "" {
		return nil
	}
	return []string{"SUBSCRIBE_MODE=" + mode}
}

// fanoutInstance is one fanout process of a drainCluster, started again
// on the same port after each stop.
type fanoutInstance struct {
	port int
	// p is the running process (a new admin port at every start).
	p *fanout
}

// drainCluster is redis-server, fanout processes on fixed ports and nginx
// with deploy/nginx.conf in front of them.
type drainCluster struct {
	t         *testing.T
	r         *testproc.Redis
	env       []string
	instances []*fanoutInstance
	// base is nginx's http://127.0.0.1:PORT.
	base string
}

// startDrainCluster starts n ready fanout processes with env behind nginx.
func startDrainCluster(t *testing.T, n int, env ...string) *drainCluster {
	t.Helper()
	c := &drainCluster{t: t, r: testproc.StartRedis(t), env: env}
	var backends []string
	for len(c.instances) < n {
		// Below the ephemeral range (testproc.FreePort's): the clients'
		// thousands of sockets cannot take it while the instance restarts.
		port := testproc.FreePort(t)
		c.instances = append(c.instances, &fanoutInstance{port: port})
		backends = append(backends, "127.0.0.1:"+strconv.Itoa(port))
	}
	for i := range c.instances {
		c.launch(i)
	}
	for i := range c.instances {
		c.waitReady(i)
	}
	c.base = "http://127.0.0.1:" + strconv.Itoa(startNginx(t, backends))
	return c
}

// launch starts instance i's process on its port.
func (c *drainCluster) launch(i int) {
	c.t.Helper()
	inst := c.instances[i]
	inst.p = launchFanout(c.t, c.r.Addr(), inst.port, c.env...)
}

// readyStatus is the status of instance i's /ready, 0 when unreachable.
func (c *drainCluster) readyStatus(i int) int {
	status, _, err := get("http://127.0.0.1:" + strconv.Itoa(c.instances[i].port) + "/ready")
	if err != nil {
		return 0
	}
	return status
}

// waitReady waits until instance i's /ready answers 200.
func (c *drainCluster) waitReady(i int) {
	c.t.Helper()
	p := c.instances[i].p
	testproc.Eventually(c.t, 20*time.Second, fmt.Sprintf("instance %d ready", i), func() bool {
		select {
		case <-p.Done():
			c.t.Fatalf("instance %d exited (%v) before it was ready:\n%s", i, p.Err(), p.Output())
		default:
		}
		return c.readyStatus(i) == http.StatusOK
	})
}

// stop sends instance i SIGTERM and waits for its exit, with status 0.
func (c *drainCluster) stop(i int) {
	c.t.Helper()
	c.instances[i].p.sigterm()
}

// connections returns the connections instance i holds (/admin/stats).
func (c *drainCluster) connections(i int) int {
	c.t.Helper()
	return int(c.instances[i].p.stats().Connections)
}

// spread returns every instance's connections, and their sum.
func (c *drainCluster) spread(running ...int) ([]int, int) {
	var counts []int
	sum := 0
	for _, i := range running {
		n := c.connections(i)
		counts = append(counts, n)
		sum += n
	}
	return counts, sum
}

// Reconnect policy of fanout-client.js (#retry, #backoff, STABLE_MS), with
// its default options.
const (
	clientMinDelay = 500 * time.Millisecond
	clientMaxDelay = 30 * time.Second
	// clientStable is how long a connection must stay open to reset the
	// backoff.
	clientStable = 5 * time.Second
	// drainClientHistory is the history option of the drain clients: more
	// than the rounds any test publishes.
	drainClientHistory = 100
)

// drainEvent is one event a drainClient received.
type drainEvent struct {
	id      string
	counter int
	// sent is when the publisher sent it (its sent_unix_ns).
	sent time.Time
}

// drainMove is one close 1001 a drainClient received and how it came back.
type drainMove struct {
	// closedAt is when the read returned the close 1001.
	closedAt time.Time
	// delay is the random wait the client chose before dialling.
	delay       time.Duration
	failedDials int
	// resumedFrom is the last_event_id the new connection was opened with.
	resumedFrom string
	// handshake is from closedAt to the new connection's 101 read: resumed
	// (0 while not back).
	handshake time.Duration
	// firstEvent is from closedAt to the first event on the new connection
	// (0 if none came); replayed tells that it was published before the
	// handshake completed, so it came from the history.
	firstEvent time.Duration
	replayed   bool
}

// drainClient is one user's WebSocket through nginx with fanout.v1,
// reconnecting as fanout-client.js does: after any close it waits a random
// 50–100 % of the backoff (clientMinDelay doubling up to clientMaxDelay,
// reset once a connection stayed open clientStable), then resumes with
// ?last_event_id=.
type drainClient struct {
	wsURL string
	user  string
	// rng is owned by run.
	rng *rand.Rand

	// mu guards what follows.
	mu        sync.Mutex
	events    []drainEvent
	moves     []drainMove
	handshake int
	// problems are what the client should never see: a control, a frame
	// it cannot parse, a close other than 1001.
	problems []string
	lastErr  string
	// statuses counts the HTTP statuses of failed dials (0: no response,
	// e.g. a refused connect).
	statuses map[int]int
}

func newDrainClient(base, user string, seed uint64) *drainClient {
	return &drainClient{
		wsURL:    "ws" + strings.TrimPrefix(base, "http") + "/ws",
		user:     user,
		rng:      rand.New(rand.NewPCG(seed, 3)),
		statuses: map[int]int{},
	}
}

// backoff is fanout-client.js's #backoff: failures counts the delays
// taken since the last stable connection.
func (c *drainClient) backoff(failures *int) time.Duration {
	base := min(clientMaxDelay, clientMinDelay<<min(*failures, 20))
	*failures++
	return base/2 + time.Duration(c.rng.Int64N(int64(base/2)+1))
}

func (c *drainClient) problem(format string, args ...any) {
	c.mu.Lock()
	c.problems = append(c.problems, fmt.Sprintf(format, args...))
	c.mu.Unlock()
}

// run connects and reconnects until ctx ends.
func (c *drainClient) run(ctx context.Context) {
	dialer := websocket.Dialer{Subprotocols: []string{historySubprotocol}, HandshakeTimeout: 10 * time.Second}
	last := ""
	failures := 0
	move := -1 // the index of the move in progress, -1 if none
	for ctx.Err() == nil {
		// Resume after the last event; until there is one, ask for the
		// retained events (fanout-client.js's history option), so that
		// one published just before a 1001 is not lost.
		q := url.Values{"username": {c.user}}
		if last != "" {
			q.Set("last_event_id", last)
		} else {
			q.Set("history", strconv.Itoa(drainClientHistory))
		}
		conn, resp, err := dialer.DialContext(ctx, c.wsURL+"?"+q.Encode(), nil)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			status := 0
			if resp != nil {
				status = resp.StatusCode
			}
			c.mu.Lock()
			c.statuses[status]++
			c.lastErr = err.Error()
			if move >= 0 {
				c.moves[move].failedDials++
			}
			c.mu.Unlock()
			sleepCtx(ctx, c.backoff(&failures))
			continue
		}
		opened := time.Now()
		if got := conn.Subprotocol(); got != historySubprotocol {
			c.problem("subprotocol %q", got)
			_ = conn.Close()
			return
		}
		c.mu.Lock()
		c.handshake++
		if move >= 0 {
			c.moves[move].handshake = opened.Sub(c.moves[move].closedAt)
			c.moves[move].resumedFrom = last
		}
		c.mu.Unlock()
		stopClose := context.AfterFunc(ctx, func() { _ = conn.Close() })
		var end error
		for {
			_, msg, err := conn.ReadMessage()
			if err != nil {
				end = err
				break
			}
			now := time.Now()
			f, err := parseHistoryMessage(msg)
			if err != nil || f.Control != "" {
				c.problem("frame %s (%v)", msg, err)
				continue
			}
			var p struct {
				Counter    int   `json:"counter"`
				SentUnixNs int64 `json:"sent_unix_ns"`
			}
			if err := json.Unmarshal([]byte(f.Data), &p); err != nil {
				c.problem("event %s: %v", f.Data, err)
				continue
			}
			ev := drainEvent{id: f.ID, counter: p.Counter, sent: time.Unix(0, p.SentUnixNs)}
			// An event the daemon could not record comes without an id
			// (its log says so): as fanout-client.js does, the last id
			// stays where it was.
			if f.HasID {
				last = f.ID
			}
			c.mu.Lock()
			c.events = append(c.events, ev)
			if move >= 0 && c.moves[move].firstEvent == 0 {
				m := &c.moves[move]
				m.firstEvent = now.Sub(m.closedAt)
				m.replayed = ev.sent.Before(opened)
			}
			c.mu.Unlock()
		}
		stopClose()
		_ = conn.Close()
		closedAt := time.Now()
		if ctx.Err() != nil {
			return
		}
		if closedAt.Sub(opened) >= clientStable {
			failures = 0
		}
		delay := c.backoff(&failures)
		c.mu.Lock()
		move = -1
		if websocket.IsCloseError(end, websocket.CloseGoingAway) {
			c.moves = append(c.moves, drainMove{closedAt: closedAt, delay: delay})
			move = len(c.moves) - 1
		} else {
			c.problems = append(c.problems, fmt.Sprintf("connection ended with %v, want close 1001", end))
		}
		c.mu.Unlock()
		sleepCtx(ctx, delay)
	}
}

// state returns copies of what the client has recorded.
func (c *drainClient) state() (events []drainEvent, moves []drainMove, handshakes int, problems []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.events), slices.Clone(c.moves), c.handshake, slices.Clone(c.problems)
}

// check fails unless verify passes.
func (c *drainClient) check(t *testing.T, rounds int) {
	t.Helper()
	if err := c.verify(rounds); err != nil {
		t.Fatal(err)
	}
}

// verify says whether the client received events 0..rounds-1 of its user,
// in order, each once, with increasing ids (an event without one, which
// the daemon could not record, aside), and saw nothing unexpected.
func (c *drainClient) verify(rounds int) error {
	events, moves, _, problems := c.state()
	if len(problems) > 0 {
		return fmt.Errorf("%s: %d problems, first: %s", c.user, len(problems), problems[0])
	}
	var prev history.ID
	for i, e := range events {
		id, ok := history.ParseID(e.id)
		if e.id == "" {
			id, ok = prev, true // not recorded: no id to compare
		}
		if e.counter != i || !ok || (e.id != "" && i > 0 && !prev.Less(id)) {
			var b strings.Builder
			for _, m := range moves {
				fmt.Fprintf(&b, "  1001 at %s, resumed from %q after %v (%d failed dials)\n",
					m.closedAt.Format("15:04:05.000"), m.resumedFrom, m.handshake, m.failedDials)
			}
			return fmt.Errorf("%s: event #%d is counter %d id %s after %s, want counter %d with a later id (%d events, %d wanted); moves:\n%s",
				c.user, i, e.counter, e.id, prev, i, len(events), rounds, b.String())
		}
		prev = id
	}
	if len(events) != rounds {
		return fmt.Errorf("%s: %d events, want %d", c.user, len(events), rounds)
	}
	return nil
}

// received is how many events the client has.
func (c *drainClient) received() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.events)
}

// publisher returns a Redis client for the drain tests' publisher that
// never sends a command twice: go-redis retries a pipeline whose reply
// timed out (3 s by default, which a starved Redis reaches under the race
// detector), and a PUBLISH sent again is a second, identical event.
func (c *drainCluster) publisher() *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: c.r.Addr(), MaxRetries: -1,
		ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second})
	c.t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// drainPayload is the round-th event of user, stamped with its send time.
func drainPayload(user string, round int) string {
	return fmt.Sprintf(`{"type":"node_completed","run_id":"r:drain","username":%q,"counter":%d,"sent_unix_ns":%d}`,
		user, round, time.Now().UnixNano())
}

// publishRounds publishes rounds: one event to every user per round, with
// plain PUBLISH in pipelines of at most chunk, spread evenly over every.
// It goes on while more(round) says so, for at most maxRounds, and
// returns the rounds published.
// publishStoppingAtRound10 publishes rounds of events to users (chunk at
// a time, every 100ms) in the background, stops instance stopped once
// round 10 is out, and returns the publisher's outcome to wait for.
func (c *drainCluster) publishStoppingAtRound10(ctx context.Context, users []string, chunk, rounds, stopped int) <-chan error {
	signalled := make(chan struct{})
	published := make(chan error, 1)
	go func() {
		_, err := publishRounds(ctx, c.publisher(), users, chunk, 100*time.Millisecond, rounds, func(round int) bool {
			if round == 10 {
				close(signalled)
			}
			return true
		})
		published <- err
	}()
	select {
	case <-signalled:
		c.stop(stopped)
	case err := <-published:
		published <- err // ended before round 10: the caller reads why
	}
	return published
}

func publishRounds(ctx context.Context, rdb *redis.Client, users []string, chunk int, every time.Duration,
	maxRounds int, more func(round int) bool) (int, error) {
	chunks := (len(users) + chunk - 1) / chunk
	tick := time.NewTicker(every / time.Duration(chunks))
	defer tick.Stop()
	round := 0
	for ; round < maxRounds && more(round); round++ {
		for start := 0; start < len(users); start += chunk {
			pipe := rdb.Pipeline()
			for _, u := range users[start:min(start+chunk, len(users))] {
				pipe.Publish(ctx, history.Channel(u), drainPayload(u, round))
			}
			if _, err := pipe.Exec(ctx); err != nil {
				return round, fmt.Errorf("publish round %d: %w", round, err)
			}
			select {
			case <-ctx.Done():
				return round, ctx.Err()
			case <-tick.C:
			}
		}
	}
	return round, nil
}

// percentile returns the q-quantile of ds (nearest rank), 0 when empty.
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[max(0, int(float64(len(s))*q+0.999999)-1)]
}

// gapSummary is the 1001 → resumed gaps of some moves, for t.Logf.
func gapSummary(moves []drainMove) string {
	var handshake, dial, first []time.Duration
	for _, m := range moves {
		handshake = append(handshake, m.handshake)
		if m.failedDials == 0 {
			dial = append(dial, m.handshake-m.delay)
		}
		if m.replayed {
			first = append(first, m.firstEvent)
		}
	}
	r := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	return fmt.Sprintf("1001 → handshake complete: p50 %v p99 %v max %v (n=%d); "+
		"of which the dial through nginx (less the random wait): p50 %v p99 %v; "+
		"1001 → first missed event replayed: p50 %v p99 %v (n=%d)",
		r(percentile(handshake, .5)), r(percentile(handshake, .99)), r(percentile(handshake, 1)), len(handshake),
		r(percentile(dial, .5)), r(percentile(dial, .99)),
		r(percentile(first, .5)), r(percentile(first, .99)), len(first))
}

// TestFromSIGTERMOnReadyIsRefusedBeforeAnyClientGets1001: as soon as
// shutdown begins the instance stops listening, so /ready (a load
// balancer's or kubelet's check) and new connections are refused, before
// the first close 1001 goes out: a client that reconnects at once cannot
// land on the instance that is stopping. A request already under way when
// the signal comes gets no answer at all (net/http drops a request whose
// headers complete after Shutdown began), never a 200, and it does not
// hold the 1001s back: net/http's Shutdown waits up to 5 s for such a
// connection, and the clients used to get their 1001 only after it (or,
// with SHUTDOWN_TIMEOUT at 5 s or less, a dropped connection instead).
func TestFromSIGTERMOnReadyIsRefusedBeforeAnyClientGets1001(t *testing.T) {
	fanoutBinary(t)
	t.Parallel()
	r := testproc.StartRedis(t)
	port := testproc.FreePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	p := launchFanout(t, r.Addr(), port)
	testproc.Eventually(t, 20*time.Second, "ready", func() bool {
		status, _, err := get("http://" + addr + "/ready")
		return err == nil && status == http.StatusOK
	})
	conn := dialWS(t, "ws://"+addr+"/ws?username=u", nil)
	p.WaitOutput(t, 5*time.Second, "New WebSocket connection")
	// A probe under way: its headers are not finished yet.
	probe, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	if _, err := fmt.Fprint(probe, "GET /ready HTTP/1.1\r\nHost: fanout\r\n"); err != nil {
		t.Fatal(err)
	}

	signalled := time.Now()
	p.Signal(t, syscall.SIGTERM)
	if err := readUntilError(conn); !websocket.IsCloseError(err, websocket.CloseGoingAway) {
		t.Fatalf("%v, want close 1001", err)
	}
	if took := time.Since(signalled); took > 2*time.Second {
		t.Fatalf("close 1001 came %v after SIGTERM, want it at once", took)
	}
	// The close 1001 is in: the listener is closed already.
	if status, body, err := get("http://" + addr + "/ready"); err == nil {
		t.Fatalf("/ready after the first 1001: %d %q, want the connection refused", status, body)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		_ = c.Close()
		t.Fatal("a new connection was accepted after the first 1001")
	}
	_, _ = fmt.Fprint(probe, "\r\n")
	_ = probe.SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, err := http.ReadResponse(bufio.NewReader(probe), nil); err == nil {
		t.Fatalf("the /ready request under way got %s, want no answer", resp.Status)
	}
	p.WaitExit(t, 10*time.Second)
}

// TestSIGTERMThroughNginxMovesEveryClientToTheOtherInstancesAndLosesNothing:
// one of 3 instances gets SIGTERM while a publisher sends steadily; every
// client it held gets close 1001, comes back through nginx (never to the
// stopped instance: no dial fails), resumes with its last id and has
// every event published before, during and after, in order, once.
func TestSIGTERMThroughNginxMovesEveryClientToTheOtherInstancesAndLosesNothing(t *testing.T) {
	skipShort(t)
	t.Parallel()
	for _, mode := range drainModes {
		t.Run(drainModeName(mode), func(t *testing.T) {
			c := startDrainCluster(t, 3, drainModeEnv(mode)...)
			const users = 60
			seed := uint64(time.Now().UnixNano())
			t.Logf("seed %d", seed)
			var clients []*drainClient
			var names []string
			ctx, cancel := context.WithCancel(t.Context())
			var wg sync.WaitGroup
			defer wg.Wait()
			defer cancel()
			for i := range users {
				name := fmt.Sprintf("drain-%d", i)
				dc := newDrainClient(c.base, name, seed+uint64(i))
				clients, names = append(clients, dc), append(names, name)
				wg.Go(func() { dc.run(ctx) })
			}
			testproc.Eventually(t, 20*time.Second, "every client connected", func() bool {
				_, n := c.spread(0, 1, 2)
				return n == users
			})
			before, _ := c.spread(0, 1, 2)
			const stopped = 1
			if before[stopped] == 0 {
				t.Fatalf("connections per instance %v: nginx gave instance %d none", before, stopped)
			}

			// 40 rounds, one every 100 ms; SIGTERM after the 10th.
			const rounds = 40
			published := c.publishStoppingAtRound10(ctx, names, users, rounds, stopped)
			after, _ := c.spread(0, 2)
			if err := <-published; err != nil {
				t.Fatal(err)
			}
			for _, dc := range clients {
				deadline := time.Now().Add(20 * time.Second)
				for dc.received() < rounds && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
			}
			time.Sleep(300 * time.Millisecond) // a duplicate would come now
			counts, n := c.spread(0, 2)
			cancel()
			wg.Wait()

			var moves []drainMove
			for _, dc := range clients {
				dc.check(t, rounds)
				_, m, handshakes, _ := dc.state()
				moves = append(moves, m...)
				if len(m) > 1 || handshakes != 1+len(m) {
					t.Fatalf("%s: %d closes 1001 and %d handshakes, want at most one 1001 and one handshake after it", dc.user, len(m), handshakes)
				}
				for _, mv := range m {
					if mv.failedDials > 0 || mv.handshake == 0 || mv.resumedFrom == "" {
						t.Fatalf("%s: after 1001, %d failed dials (last: %s), resumed from %q after %v: want one dial through nginx, resuming",
							dc.user, mv.failedDials, dc.lastErr, mv.resumedFrom, mv.handshake)
					}
				}
			}
			if len(moves) != before[stopped] {
				t.Fatalf("%d clients got 1001, want the %d instance %d held (connections before %v)", len(moves), before[stopped], stopped, before)
			}
			if n != users {
				t.Fatalf("connections on the two instances left: %v, want %d in all", counts, users)
			}
			t.Logf("connections before %v; just after the exit on the two left %v; at the end %v", before, after, counts)
			t.Logf("%d clients moved: %s", len(moves), gapSummary(moves))
		})
	}
}

// TestRollingRestartOf3InstancesWith3000UsersLosesNothing: 3 000 users,
// one client each through deploy/nginx.conf, a publisher sending one event
// to every user every 2 s (3 s under the race detector), while the 3
// instances are restarted one after the other at the pace of readiness
// (SIGTERM, exit, a new process on the same port, /ready answers 200,
// the next one at once: a Kubernetes rolling update's pace). No client
// gets a 5xx from nginx, every client is back within rollingBackP99 of
// its 1001 at p99, and every client ends with every event of its user,
// in order, once.
func TestRollingRestartOf3InstancesWith3000UsersLosesNothing(t *testing.T) {
	skipShort(t)
	t.Parallel()
	for _, mode := range drainModes {
		t.Run(drainModeName(mode), func(t *testing.T) { rollingRestart(t, mode, 3000) })
	}
}

// rollingBackP99 bounds the 99th percentile of 1001 → new handshake
// complete in a rolling restart (issue 20: within 2 s).
const rollingBackP99 = 2 * time.Second

// rollingDowntime is how long each instance stays down between its exit
// and the new process's start in the rolling restart.
const rollingDowntime = time.Second

func rollingRestart(t *testing.T, mode string, users int) {
	began := time.Now()
	c := startDrainCluster(t, 3, append(drainModeEnv(mode), "LOG_LEVEL=warn")...)
	// Presence (on by default): each user is announced online once, and
	// the restarts, whose clients come back within PRESENCE_GRACE (5 s),
	// publish nothing.
	watch := watchPresence(t, c.r.Client())
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	var clients []*drainClient
	var names []string
	for i := range users {
		name := fmt.Sprintf("rolling-%d", i)
		dc := newDrainClient(c.base, name, seed+uint64(i))
		clients, names = append(clients, dc), append(names, name)
		wg.Go(func() { dc.run(ctx) })
		if i%100 == 99 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	testproc.Eventually(t, 30*time.Second, "every client connected", func() bool {
		_, n := c.spread(0, 1, 2)
		return n == users
	})
	spread, _ := c.spread(0, 1, 2)
	t.Logf("%d clients connected in %v: %v", users, time.Since(began).Round(time.Millisecond), spread)
	testproc.Eventually(t, 10*time.Second, "every user announced online", func() bool { return len(watch.transitions()) >= users })

	// The publisher goes on until two rounds after the last restart.
	var mu sync.Mutex
	restartedAt := -1 // the round during which the last instance was ready
	roundNow := 0
	// 1 500 events/s; under the race detector Redis and the instances'
	// recorders fall behind on a busy 2-core machine, so 1 000.
	every := 2 * time.Second
	if raceEnabled {
		every = 3 * time.Second
	}
	published := make(chan error, 1)
	var rounds int
	go func() {
		var err error
		rounds, err = publishRounds(ctx, c.publisher(), names, 250, every, 30, func(round int) bool {
			mu.Lock()
			defer mu.Unlock()
			roundNow = round
			return restartedAt < 0 || round <= restartedAt+2
		})
		published <- err
	}()
	time.Sleep(every) // a round before the first SIGTERM

	for i := range c.instances {
		step := time.Now()
		c.stop(i)
		exited := time.Since(step)
		for _, line := range strings.Split(c.instances[i].p.Output(), "\n") {
			if strings.Contains(line, "level=WARN") && !strings.Contains(line, "PROTECTED MODE") {
				t.Logf("instance %d: %s", i, line)
			}
		}
		// A restart that takes as long as a real one (systemd, a
		// container, a new binary): the clients of the stopped instance
		// reconnect while it is down, so nginx sees its refused connects.
		time.Sleep(rollingDowntime)
		c.launch(i)
		c.waitReady(i)
		counts, n := c.spread(0, 1, 2)
		t.Logf("instance %d: exited %v after SIGTERM, new process ready after %v; connections %v (%d)",
			i, exited.Round(time.Millisecond), time.Since(step).Round(time.Millisecond), counts, n)
	}
	mu.Lock()
	restartedAt = roundNow
	mu.Unlock()
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	t.Logf("published %d rounds (%d events), restarts done during round %d", rounds, rounds*users, restartedAt)
	deadline := time.Now().Add(20 * time.Second)
	for _, dc := range clients {
		for dc.received() < rounds && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	time.Sleep(300 * time.Millisecond) // a duplicate would come now
	// An offline would be published PRESENCE_GRACE after its user was
	// left without a connection: until then the user waits in presence's
	// pending set, which each user's return empties. Once it is empty no
	// offline can come.
	testproc.Eventually(t, 10*time.Second, "no user pending offline", func() bool {
		n, err := c.r.Client().ZCard(context.Background(), presence.PendingKey).Result()
		return err == nil && n == 0
	})
	cancel()
	wg.Wait()

	var moves []drainMove
	failedDials, movedTwice, withoutID := 0, 0, 0
	statuses := map[int]int{}
	for _, dc := range clients {
		if err := dc.verify(rounds); err != nil {
			// What the history holds for that user, to tell a duplicate
			// recording from a duplicate delivery.
			entries, herr := history.After(context.Background(), c.r.Client(), dc.user, "", 1000)
			for _, e := range entries {
				t.Logf("history of %s: %s %s", dc.user, e.ID, e.Data)
			}
			t.Fatalf("%v(history read: %v)", err, herr)
		}
		events, m, _, _ := dc.state()
		for _, e := range events {
			if e.id == "" {
				withoutID++
			}
		}
		if len(m) == 0 {
			t.Fatalf("%s never got a close 1001, though every instance was restarted", dc.user)
		}
		if len(m) > 1 {
			movedTwice++
		}
		for _, mv := range m {
			if mv.handshake == 0 {
				t.Fatalf("%s: a 1001 was never followed by a connection", dc.user)
			}
			failedDials += mv.failedDials
		}
		moves = append(moves, m...)
		dc.mu.Lock()
		for status, n := range dc.statuses {
			statuses[status] += n
		}
		dc.mu.Unlock()
	}
	t.Logf("%d closes 1001 (%d clients moved more than once), %d failed dials after them (by HTTP status, 0 for none: %v); %d events delivered without an id (not recorded)",
		len(moves), movedTwice, failedDials, statuses, withoutID)
	t.Logf("rolling restart, SUBSCRIBE_MODE=%s: %s", drainModeName(mode), gapSummary(moves))
	onlines, offlines := map[string]int{}, 0
	for _, tr := range watch.transitions() {
		if tr.Online {
			onlines[tr.Username]++
		} else {
			offlines++
		}
	}
	t.Logf("presence: %d users announced online, %d offline transitions during the restarts", len(onlines), offlines)
	if offlines > 0 {
		t.Errorf("%d offline transitions in a rolling restart whose clients all came back: want none", offlines)
	}
	for _, name := range names {
		if onlines[name] != 1 {
			t.Errorf("%s announced online %d times, want once", name, onlines[name])
		}
	}
	t.Logf("whole test %v", time.Since(began).Round(time.Millisecond))
	for status, n := range statuses {
		if status >= 500 {
			t.Errorf("%d dials answered %d by nginx: want no 5xx in a rolling restart", n, status)
		}
	}
	var backs []time.Duration
	for _, m := range moves {
		backs = append(backs, m.handshake)
	}
	// Under the race detector the 3 000 clients (this test's process)
	// run several times slower on the same 2 cores as nginx and the
	// instances: the gap measures the clients' own slowness there, so
	// ./test.sh runs this test without it.
	if p99 := percentile(backs, .99); p99 > rollingBackP99 && !raceEnabled {
		t.Errorf("1001 → back p99 %v, want at most %v", p99, rollingBackP99)
	}
}

// jitterPageScript opens n fanout-client.js clients in the harness page,
// users jitter-0…, each reporting its status changes with the page's
// clock (ms since the epoch) and its events. They acknowledge nothing
// (ack: 'never'): the test times each client's reconnect to within a
// quarter of minDelay, and 90 clients of one page acknowledging every
// second, on three race-detector daemons writing their receipts, made the
// page's timers fire up to half a second late (1 run in 3 over the bound;
// without acks, as before read receipts, none in 3).
const jitterPageScript = `
for (let i = 0; i < %d; i++) {
  const name = 'jitter-' + i;
  const now = () => (performance.timeOrigin + performance.now()).toFixed(1);
  window.fanout.connect({
    url: %q, username: name, history: 100, ack: 'never',
    onStatus: (s) => window.report('jstatus ' + name + ' ' + s.state + ' code=' + s.code + ' delay=' + s.delay + ' t=' + now()),
    onEvent: (event, raw, info) => window.report('jevent ' + name + ' ' + event.counter + ' id=' + info.id),
    onResync: (r) => window.report('jresync ' + name + ' ' + r.reason),
  });
}
`

// TestBrowserClientsOfAStoppedInstanceComeBackSpreadOutAndMissNothing:
// fanout-client.js in headless Chromium, 90 clients in one page through
// nginx, about 30 on each of 3 instances. The instance holding the most
// gets SIGTERM: each of its clients waits a random 50–100 % of minDelay
// after the close 1001 (never at once), so they come back spread out, and
// every client ends with every event.
func TestBrowserClientsOfAStoppedInstanceComeBackSpreadOutAndMissNothing(t *testing.T) {
	// Not in parallel: it measures when each client dials again, to
	// within a quarter of minDelay, which a busy machine would blur.
	skipShort(t)
	c := startDrainCluster(t, 3)
	const clients, rounds = 90, 40
	const minDelay = 500 * time.Millisecond // fanout-client.js's default
	h := startClientHarness(t, c.base, nil)
	h.send(map[string]any{"cmd": "script", "code": fmt.Sprintf(jitterPageScript, clients, "ws"+strings.TrimPrefix(c.base, "http")+"/ws")})
	testproc.Eventually(t, 30*time.Second, "every client open", func() bool {
		return countLines(h.p.Output(), " open code=") == clients
	})
	testproc.Eventually(t, 10*time.Second, "every connection registered", func() bool {
		_, n := c.spread(0, 1, 2)
		return n == clients
	})
	before, _ := c.spread(0, 1, 2)
	stopped := 0
	for i, n := range before {
		if n > before[stopped] {
			stopped = i
		}
	}
	var names []string
	for i := range clients {
		names = append(names, fmt.Sprintf("jitter-%d", i))
	}
	published := c.publishStoppingAtRound10(t.Context(), names, clients, rounds, stopped)
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	testproc.Eventually(t, 30*time.Second, "every event in every client", func() bool {
		return countLines(h.p.Output(), "jevent ") >= clients*rounds
	})
	time.Sleep(300 * time.Millisecond) // a duplicate would come now
	logs := h.p.Output()
	h.exit()

	// Per client: its events in order; after the 1001, when it dialled
	// (its status goes from reconnecting with a delay to reconnecting with
	// none) and when the new connection opened.
	counters := map[string][]int{}
	closedAt, dialledAt, chosen := map[string]float64{}, map[string]float64{}, map[string]float64{}
	var waits, opens, dials, delays, lateness []float64
	for _, line := range strings.Split(logs, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[0] == "jevent":
			n, _ := strconv.Atoi(f[2])
			counters[f[1]] = append(counters[f[1]], n)
		case len(f) >= 3 && f[0] == "jresync":
			t.Fatalf("%s: resync %s, want none", f[1], strings.Join(f[2:], " "))
		case len(f) == 6 && f[0] == "jstatus":
			name := f[1]
			at, _ := strconv.ParseFloat(strings.TrimPrefix(f[5], "t="), 64)
			switch {
			case f[2] == "reconnecting" && f[3] == "code=1001" && f[4] != "delay=0":
				if _, twice := closedAt[name]; twice {
					t.Fatalf("%s: a second close 1001", name)
				}
				closedAt[name] = at
				delay, _ := strconv.ParseFloat(strings.TrimPrefix(f[4], "delay="), 64)
				chosen[name] = delay
				delays = append(delays, delay)
			case f[2] == "reconnecting" && f[4] == "delay=0":
				if start, ok := closedAt[name]; ok {
					if _, ok := dialledAt[name]; ok {
						t.Fatalf("%s: a second dial after its 1001", name)
					}
					dialledAt[name] = at
					waits = append(waits, at-start)
					lateness = append(lateness, at-start-chosen[name])
					dials = append(dials, at)
				}
			case f[2] == "open":
				if start, ok := closedAt[name]; ok {
					opens = append(opens, at-start)
				}
			case f[2] != "connecting" && f[2] != "reconnecting":
				t.Fatalf("%s: status %s, want only connecting, open, reconnecting", name, strings.Join(f[2:], " "))
			}
		}
	}
	for _, name := range names {
		if got := counters[name]; !slices.Equal(got, numbers(rounds)) {
			t.Fatalf("%s received counters %v, want 0…%d once each, in order", name, got, rounds-1)
		}
	}
	if len(closedAt) != before[stopped] || len(waits) != len(closedAt) || len(opens) != len(closedAt) {
		t.Fatalf("%d clients got 1001, %d dialled again and %d opened, want the %d of instance %d (connections %v)",
			len(closedAt), len(waits), len(opens), before[stopped], stopped, before)
	}
	slices.Sort(waits)
	slices.Sort(dials)
	slices.Sort(opens)
	spread := dials[len(dials)-1] - dials[0]
	ms := float64(minDelay.Milliseconds())
	// Chromium lets one WebSocket per host be connecting at a time
	// (RFC 6455 4.1), so in one page the handshakes queue behind each
	// other: the dials show the client's policy, the opens the queue.
	slices.Sort(delays)
	slices.Sort(lateness)
	t.Logf("%d clients of instance %d (connections %v): delays chosen %.0f…%.0f ms, 1001 → dial %.0f…%.0f ms (the page's timers %.0f…%.0f ms late), dials spread over %.0f ms; 1001 → open median %.0f ms, max %.0f ms",
		len(waits), stopped, before, delays[0], delays[len(delays)-1], waits[0], waits[len(waits)-1], lateness[0], lateness[len(lateness)-1], spread, opens[len(opens)/2], opens[len(opens)-1])
	// The policy is the delay each client chose; when it dialled also
	// depends on how late the page's timers ran, which on 2 cores shared
	// with the rest of the suite reached 300 ms for all 30 at once, and
	// 120 ms for the first few only, squeezing the dials' spread.
	if delays[0] < ms/2-1 || delays[len(delays)-1] > ms+1 {
		t.Fatalf("clients chose delays of %.0f…%.0f ms after their 1001, want a random 50–100 %% of minDelay (%.0f…%.0f ms)", delays[0], delays[len(delays)-1], ms/2, ms)
	}
	if lateness[0] < -5 || lateness[len(lateness)-1] > 1000 {
		t.Fatalf("clients dialled %.0f…%.0f ms after the delay they chose, want none early and none more than 1 s late", lateness[0], lateness[len(lateness)-1])
	}
	if chosenSpread := delays[len(delays)-1] - delays[0]; chosenSpread < ms/4 {
		t.Fatalf("the %d clients chose delays within %.0f ms, want them spread over more than minDelay/4 (%.0f ms)", len(delays), chosenSpread, ms/4)
	}
}

// numbers returns 0, 1, …, n-1.
func numbers(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// sleepCtx sleeps for d or until ctx ends, and reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
