package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"fanout/history"

	"github.com/gorilla/websocket"
)

// childEnv carries the child's configuration (JSON) from the parent; its
// presence is what makes the process a child.
const childEnv = "FANOUT_BENCH_CHILD"

// childConfig is what a child needs: the global connection indices [Lo, Hi)
// it opens. Connection i watches user UserPrefix + (i % Users), dials
// URLs[instanceOf(i % Users, len(URLs))] and binds source address
// 127.0.0.(1 + i % Sources).
type childConfig struct {
	URLs        []string      `json:"urls"`                  // one /ws URL (/events with SSE) per daemon instance
	Transport   string        `json:"transport,omitempty"`   // "sse": SSE streams (sse.go); "" or "ws": WebSocket
	Subprotocol string        `json:"subprotocol,omitempty"` // offered on every dial ("fanout.v1")
	UserPrefix  string        `json:"user_prefix"`           // "u" (the S scenarios, live users) or "s" (storm users)
	Users       int           `json:"users"`
	Sources     int           `json:"sources"`
	Lo          int           `json:"lo"`
	Hi          int           `json:"hi"`
	DialWorkers int           `json:"dial_workers"`
	Timeout     time.Duration `json:"timeout"`  // bound of the connect phase
	MaxLife     time.Duration `json:"max_life"` // the child exits after this, whatever happens
	// StormTarget, for the storm scenario's resuming clients: the distinct
	// events a connection has once it has caught up (the event it saw
	// before leaving plus the ones it missed). A connection that reaches
	// it after "reconnect" counts as live.
	StormTarget int64 `json:"storm_target,omitempty"`
	// ReconnectWorkers is the number of concurrent dials on "reconnect".
	ReconnectWorkers int `json:"reconnect_workers,omitempty"`
	// Ack: each fanout.v1 connection acknowledges the last event id it
	// received, at most once a second (read receipts).
	Ack bool `json:"ack,omitempty"`
}

// childMsg is one line a child writes on stdout: "c" (connect phase done),
// "p" (progress: deliveries so far), "dc" (storm: every connection closed),
// "rc" (storm: every connection dialled again), "s" (final summary).
type childMsg struct {
	T string `json:"t"`
	// "c" and "rc"
	OK     int      `json:"ok,omitempty"`
	Fail   int      `json:"fail,omitempty"`
	Failed []int    `json:"failed,omitempty"` // global indices of failed connections
	Errs   []string `json:"errs,omitempty"`   // a few distinct dial errors
	// "rc": seconds from the command to the last dial's end.
	Secs float64 `json:"secs,omitempty"`
	// "dc": connections that had seen no event id, so cannot resume.
	NoID int `json:"no_id,omitempty"`
	// "p" and "s"
	D  int64 `json:"d,omitempty"`  // deliveries (right user, not a duplicate)
	CU int64 `json:"cu,omitempty"` // storm connections caught up since "reconnect"
	// SSE: comment lines (the daemon's heartbeats) received, and the
	// streams that have received at least one.
	HB int64 `json:"hb,omitempty"`
	HS int64 `json:"hs,omitempty"`
	// "s"
	Dups        int64                 `json:"dups,omitempty"`
	OOO         int64                 `json:"ooo,omitempty"`
	Leaks       int64                 `json:"leaks,omitempty"`
	ParseErrs   int64                 `json:"parse_errs,omitempty"`
	Disconnects int64                 `json:"disconnects,omitempty"`
	WithID      int64                 `json:"with_id,omitempty"`      // events that carried an id (fanout.v1)
	IDRegress   int64                 `json:"id_regress,omitempty"`   // ids not above the connection's previous one
	Controls    int64                 `json:"controls,omitempty"`     // control messages ({"control":…})
	Acks        int64                 `json:"acks,omitempty"`         // acknowledgements sent (-ack)
	ControlText []string              `json:"control_text,omitempty"` // a few of them, verbatim
	LastRecvNs  [2]int64              `json:"last_recv_ns,omitempty"` // per phase
	Hist        [numHists][][2]uint64 `json:"hist,omitempty"`         // sparse
	HistMax     [numHists]int64       `json:"hist_max,omitempty"`
	CPUTicks    int64                 `json:"cpu_ticks,omitempty"` // the child's own utime+stime
}

// The histograms a child keeps: latency of phase-1 and phase-2 events (the
// "ph" field; events of any other phase are counted but not timed), and the
// storm's time from "reconnect" to each connection being caught up.
const (
	histPhase1 = iota
	histPhase2
	histCatchUp
	numHists
)

// benchConn is one client connection and its delivery bookkeeping. Its
// reader goroutine owns every field but ws, conn, leaving and done until it
// returns (it closes done); the command loop then owns them again (storm
// reconnects replace ws and done, keeping the bookkeeping, so duplicates
// across a reconnect are caught).
type benchConn struct {
	ws       *websocket.Conn
	user     string
	v1       bool     // the daemon chose fanout.v1: events are {"id":…,"data":…}
	last     int64    // highest sequence number seen
	seen     []uint64 // bitset of sequence numbers seen, for exact duplicates
	distinct int64    // sequence numbers seen
	lastID   string   // id of the last event (fanout.v1)
	lastIDp  history.ID
	caughtUp bool
	leaving  atomic.Bool // the bench is closing it: not a daemon-side disconnect
	done     chan struct{}
	// With -transport sse, instead of ws: the stream's socket and its
	// parser (sse.go), and whether a heartbeat (comment line) arrived.
	conn    net.Conn
	sse     *sseStream
	sawBeat bool
	// ackAt is when this connection last acknowledged an event (-ack).
	ackAt int64
}

type childState struct {
	cfg      childConfig
	out      *bufio.Writer
	outMu    sync.Mutex
	stopping atomic.Bool

	delivered, dups, ooo, leaks, parseErrs, disconnects atomic.Int64
	// acks counts the acknowledgements sent (-ack).
	acks                                  atomic.Int64
	withID, idRegress, controls, caughtUp atomic.Int64
	heartbeats, beatStreams               atomic.Int64    // SSE comment lines; streams with one
	lastRecv                              [2]atomic.Int64 // per phase
	// reconnectAt is the wall clock of the "reconnect" command (0 before).
	reconnectAt atomic.Int64

	ctlMu   sync.Mutex
	ctlText []string

	histMu [16]sync.Mutex
	hists  [16][numHists]histogram

	dialers []*websocket.Dialer
	// With -transport sse: the same source-bound dialers, used raw, and
	// each instance's /events URL taken apart.
	netDialers []*net.Dialer
	targets    []sseTarget
}

func (s *childState) send(m childMsg) {
	b, _ := json.Marshal(m)
	s.outMu.Lock()
	s.out.Write(b)
	s.out.WriteByte('\n')
	s.out.Flush()
	s.outMu.Unlock()
}

func runChild(raw string) {
	var cfg childConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "fanout-bench child: bad config:", err)
		os.Exit(2)
	}
	if cfg.UserPrefix == "" {
		cfg.UserPrefix = "u"
	}
	// Hard bound on the child's life, whatever the parent does.
	time.AfterFunc(cfg.MaxLife, func() {
		fmt.Fprintln(os.Stderr, "fanout-bench child: max life reached, exiting")
		os.Exit(3)
	})
	s := &childState{cfg: cfg, out: bufio.NewWriterSize(os.Stdout, 64<<10)}

	s.dialers = make([]*websocket.Dialer, cfg.Sources)
	s.netDialers = make([]*net.Dialer, cfg.Sources)
	for i := range s.dialers {
		local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i))}
		nd := &net.Dialer{LocalAddr: local, Timeout: 10 * time.Second}
		s.netDialers[i] = nd
		s.dialers[i] = &websocket.Dialer{
			NetDialContext:   nd.DialContext,
			HandshakeTimeout: 10 * time.Second,
			ReadBufferSize:   1024,
			WriteBufferSize:  512,
		}
		if cfg.Subprotocol != "" {
			s.dialers[i].Subprotocols = []string{cfg.Subprotocol}
		}
	}

	if cfg.Transport == transportSSE {
		for _, u := range cfg.URLs {
			t, err := parseSSETarget(u)
			if err != nil {
				fmt.Fprintln(os.Stderr, "fanout-bench child:", err)
				os.Exit(2)
			}
			s.targets = append(s.targets, t)
		}
	}

	n := cfg.Hi - cfg.Lo
	conns := make([]*benchConn, n)
	for j := range conns {
		conns[j] = &benchConn{user: cfg.UserPrefix + strconv.Itoa((cfg.Lo+j)%cfg.Users)}
	}
	all := make([]int, n)
	for j := range all {
		all[j] = j
	}
	failed, errs := s.dialAll(conns, all, cfg.DialWorkers, func(c *benchConn) string { return "" })
	s.send(childMsg{T: "c", OK: n - len(failed), Fail: len(failed), Failed: failed, Errs: errs})

	// Progress every 10 ms (only when it changed), until stopped.
	go func() {
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		last, lastCU, lastHB := int64(-1), int64(-1), int64(-1)
		for range t.C {
			if s.stopping.Load() {
				return
			}
			// heartbeats before beatStreams (readSSE adds to them the
			// other way round): a report that shows a stream's first
			// heartbeat also counts the stream.
			hb := s.heartbeats.Load()
			hs := s.beatStreams.Load()
			if d, cu := s.delivered.Load(), s.caughtUp.Load(); d != last || cu != lastCU || hb != lastHB {
				last, lastCU, lastHB = d, cu, hb
				s.send(childMsg{T: "p", D: d, CU: cu, HB: hb, HS: hs})
			}
		}
	}()

	// Commands from the parent, until "stop" (or EOF).
	sc := bufio.NewScanner(os.Stdin)
commands:
	for sc.Scan() {
		switch sc.Text() {
		case "stop":
			break commands
		case "disconnect":
			s.send(s.disconnectAll(conns))
		case "reconnect":
			s.send(s.reconnectAll(conns))
		}
	}
	s.stopping.Store(true)
	sum := childMsg{T: "s", D: s.delivered.Load(), Dups: s.dups.Load(), OOO: s.ooo.Load(),
		Leaks: s.leaks.Load(), ParseErrs: s.parseErrs.Load(), Disconnects: s.disconnects.Load(),
		WithID: s.withID.Load(), IDRegress: s.idRegress.Load(), Controls: s.controls.Load(),
		HB: s.heartbeats.Load(), HS: s.beatStreams.Load(), Acks: s.acks.Load(),
		LastRecvNs: [2]int64{s.lastRecv[0].Load(), s.lastRecv[1].Load()}, CPUTicks: cpuTicks(os.Getpid())}
	s.ctlMu.Lock()
	sum.ControlText = s.ctlText
	s.ctlMu.Unlock()
	var merged [numHists]histogram
	for i := range s.hists {
		s.histMu[i].Lock()
		for p := range merged {
			merged[p].merge(s.hists[i][p].sparse(), s.hists[i][p].max)
		}
		s.histMu[i].Unlock()
	}
	for p := range merged {
		sum.Hist[p] = merged[p].sparse()
		sum.HistMax[p] = merged[p].max
	}
	s.send(sum)
	// The SSE sockets are closed here (the readers, stopping, count no
	// disconnect); exiting closes the WebSockets at once.
	for _, c := range conns {
		if c.conn != nil {
			c.conn.Close()
		}
	}
	os.Exit(0)
}

// dialAll dials conns[j] for each j in which, with workers concurrent dials
// bounded by the child's Timeout, appending query(c) to each URL, and starts
// each connection's reader. It returns the global indices that failed and a
// few distinct errors.
func (s *childState) dialAll(conns []*benchConn, which []int, workers int, query func(*benchConn) string) (failed []int, errs []string) {
	var next atomic.Int64
	var mu sync.Mutex
	errSeen := map[string]bool{}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	defer cancel()
	var wg sync.WaitGroup
	for w := 0; w < max(1, workers); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(next.Add(1) - 1)
				if k >= len(which) {
					return
				}
				j := which[k]
				gi := s.cfg.Lo + j
				c := conns[j]
				var ws *websocket.Conn
				var conn net.Conn
				var st *sseStream
				err := ctx.Err()
				if err == nil {
					inst := instanceOf(gi%s.cfg.Users, len(s.cfg.URLs))
					q := "?username=" + c.user + query(c)
					if s.targets != nil {
						conn, st, err = dialSSE(ctx, s.netDialers[gi%s.cfg.Sources], s.targets[inst], q)
					} else {
						ws, _, err = s.dialers[gi%s.cfg.Sources].DialContext(ctx, s.cfg.URLs[inst]+q, nil)
					}
				}
				if err != nil {
					mu.Lock()
					failed = append(failed, gi)
					if e := err.Error(); !errSeen[e] && len(errs) < 5 {
						errSeen[e] = true
						errs = append(errs, e)
					}
					mu.Unlock()
					continue
				}
				c.leaving.Store(false)
				c.done = make(chan struct{})
				if conn != nil {
					c.conn, c.sse = conn, st
					go s.readSSE(c, j)
					continue
				}
				c.ws, c.v1 = ws, ws.Subprotocol() == "fanout.v1"
				go s.read(c, j)
			}
		}()
	}
	wg.Wait()
	return failed, errs
}

// instanceOf is the instance (index into the -url list) that user number
// user connects to: round-robin by user, so all of a user's connections
// land on the same instance, as they would behind a proxy that hashes on
// the user (with least_conn they may spread over several).
func instanceOf(user, instances int) int { return user % instances }

// disconnectAll closes every open connection (a close frame 1000, then the
// socket) and waits for the readers to return. It answers "dc" with the
// number of connections that saw no event id.
func (s *childState) disconnectAll(conns []*benchConn) childMsg {
	for _, c := range conns {
		if c.done == nil {
			continue
		}
		c.leaving.Store(true)
		if c.conn != nil {
			c.conn.Close()
			continue
		}
		msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
		c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
		c.ws.Close()
	}
	noID := 0
	for _, c := range conns {
		if c.done == nil {
			continue
		}
		<-c.done
		if c.lastID == "" {
			noID++
		}
	}
	return childMsg{T: "dc", NoID: noID}
}

// reconnectAll dials every connection that has an event id again, with
// ?last_event_id=<its last id>, ReconnectWorkers dials at a time, and
// answers "rc". Caught-up times count from here.
func (s *childState) reconnectAll(conns []*benchConn) childMsg {
	t0 := time.Now()
	s.reconnectAt.Store(t0.UnixNano())
	var which []int
	for j, c := range conns {
		if c.lastID != "" {
			which = append(which, j)
		}
	}
	failed, errs := s.dialAll(conns, which, s.cfg.ReconnectWorkers, func(c *benchConn) string {
		return "&last_event_id=" + url.QueryEscape(c.lastID)
	})
	return childMsg{T: "rc", OK: len(which) - len(failed), Fail: len(failed) + len(conns) - len(which),
		Failed: failed, Errs: errs, Secs: time.Since(t0).Seconds()}
}

var (
	controlPrefix = []byte(`{"control"`)
	keyID         = []byte(`"id":"`)
)

// read is the one goroutine per connection: it reads each frame into a
// reused buffer and hand-scans the few fields it needs.
func (s *childState) read(c *benchConn, j int) {
	defer close(c.done)
	c.ws.SetReadLimit(1 << 20)
	buf := make([]byte, 0, 512)
	shard := j % len(s.hists)
	for {
		_, r, err := c.ws.NextReader()
		if err != nil {
			if !s.stopping.Load() && !c.leaving.Load() {
				s.disconnects.Add(1)
			}
			return
		}
		buf = buf[:0]
		for {
			if len(buf) == cap(buf) {
				buf = append(buf, 0)[:len(buf)]
			}
			m, err := r.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+m]
			if err == io.EOF {
				break
			}
			if err != nil {
				if !s.stopping.Load() && !c.leaving.Load() {
					s.disconnects.Add(1)
				}
				return
			}
		}
		now := time.Now().UnixNano()
		var id []byte
		if c.v1 {
			// {"id":"<id>","data":<event>} or {"control":…}; the bench
			// events have no "id" member of their own.
			if bytes.HasPrefix(buf, controlPrefix) {
				s.control(buf)
				continue
			}
			if i := bytes.Index(buf, keyID); i >= 0 {
				rest := buf[i+len(keyID):]
				if k := bytes.IndexByte(rest, '"'); k >= 0 {
					id = rest[:k]
				}
			}
		}
		s.account(c, shard, buf, id, now)
		if s.cfg.Ack && id != nil && now-c.ackAt >= int64(time.Second) {
			// As fanout-client.js does: the last id, at most once a second.
			c.ackAt = now
			if err := c.ws.WriteMessage(websocket.TextMessage, append(append([]byte(`{"ack":"`), id...), `"}`...)); err == nil {
				s.acks.Add(1)
			}
		}
	}
}

// control counts a control message (a fanout.v1 {"control":…} frame, an
// SSE named event) and keeps the first few verbatim.
func (s *childState) control(text []byte) {
	s.controls.Add(1)
	s.ctlMu.Lock()
	if len(s.ctlText) < 3 {
		s.ctlText = append(s.ctlText, string(text[:min(len(text), 200)]))
	}
	s.ctlMu.Unlock()
}

// account is the bookkeeping of one event received on c at now (both
// transports' readers call it, from c's reader goroutine): payload is the
// event's JSON, id its event id (nil when it carried none: a plain
// WebSocket, or history off). shard is the connection's histogram shard.
func (s *childState) account(c *benchConn, shard int, payload, id []byte, now int64) {
	ev, ok := scanEvent(payload)
	if !ok {
		s.parseErrs.Add(1)
		return
	}
	if string(ev.user) != c.user {
		s.leaks.Add(1)
		return
	}
	if ev.seq <= 0 || ev.seq > 1<<24 {
		s.parseErrs.Add(1)
		return
	}
	w, bit := int(ev.seq>>6), uint64(1)<<(ev.seq&63)
	for len(c.seen) <= w {
		c.seen = append(c.seen, 0)
	}
	if c.seen[w]&bit != 0 {
		s.dups.Add(1)
		return
	}
	c.seen[w] |= bit
	c.distinct++
	if ev.seq < c.last {
		s.ooo.Add(1)
	} else {
		c.last = ev.seq
	}
	if id != nil {
		s.withID.Add(1)
		p, ok := history.ParseID(string(id))
		if !ok || (c.lastID != "" && !c.lastIDp.Less(p)) {
			s.idRegress.Add(1)
		}
		c.lastID, c.lastIDp = string(id), p
	}
	p := -1
	switch ev.phase {
	case 1:
		p = histPhase1
	case 2:
		p = histPhase2
	}
	catchUp := int64(-1)
	if s.cfg.StormTarget > 0 && !c.caughtUp && c.distinct >= s.cfg.StormTarget {
		if at := s.reconnectAt.Load(); at > 0 {
			c.caughtUp = true
			catchUp = now - at
		}
	}
	if p >= 0 || catchUp >= 0 {
		s.histMu[shard].Lock()
		if p >= 0 {
			s.hists[shard][p].record(now - ev.sentNs)
		}
		if catchUp >= 0 {
			s.hists[shard][histCatchUp].record(catchUp)
		}
		s.histMu[shard].Unlock()
	}
	// caughtUp before delivered: a progress report that shows the
	// last delivery also shows the connection caught up.
	if catchUp >= 0 {
		s.caughtUp.Add(1)
	}
	s.delivered.Add(1)
	if p >= 0 {
		for {
			old := s.lastRecv[p].Load()
			if now <= old || s.lastRecv[p].CompareAndSwap(old, now) {
				break
			}
		}
	}
}
