package e2e

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
	"fanout/internal/testclient"
	"fanout/internal/testproc"
)

// History and resume across whole processes (issue 11): clients that
// resume with their last event id on another instance, while instances
// stop, through nginx; and the fanout.v1 and SSE client they use.

// historySubprotocol is the WebSocket subprotocol of history-aware clients.
// The history-aware test client (a fanout.v1 WebSocket or an SSE stream)
// is internal/testclient's, shared with the other test tier.
type (
	histFrame     = testclient.Frame
	histStream    = testclient.Stream
	histTransport = testclient.Transport
)

var (
	historyTransports   = testclient.Transports
	resumeQuery         = testclient.ResumeQuery
	newSSEClient        = testclient.NewSSEClient
	dialHistoryWS       = testclient.DialWS
	dialSSE             = testclient.DialSSE
	parseHistoryMessage = testclient.ParseV1
)

const historySubprotocol = testclient.Subprotocol

// resumeSegment is one connection of a resumingClient.
type resumeSegment struct {
	instance int
	// resumedFrom is the last id the connection was opened with.
	resumedFrom string
	viaHeader   bool
	// failedDials counts the dials that failed just before this one.
	failedDials int
	events      int
	end         string
}

// resumingClient is a history-aware client that, whenever its connection
// ends (cut by the test or closed by the instance), connects to the next
// instance with the id of the last event it received.
type resumingClient struct {
	tr    histTransport
	http  *http.Client
	user  string
	bases []string
	// diagnose, when set, logs the instances' side of a failure.
	diagnose func(t *testing.T)
	// firstQuery is added to the first connection's query only.
	firstQuery url.Values
	// rng (reconnect pauses) is owned by run.
	rng *rand.Rand

	// mu guards what follows.
	mu sync.Mutex
	// cur is the open stream, nil between connections.
	cur histStream
	// cutsPending counts the cuts asked for while the client had no
	// connection or no id yet; each ends one connection.
	cutsPending int
	stopped     bool
	events      []histFrame
	// eventSegment is the segment each event came in.
	eventSegment []int
	controls     []histFrame
	segments     []resumeSegment
	lastDialErr  error
}

func newResumingClient(t testing.TB, tr histTransport, user string, bases []string, seed uint64) *resumingClient {
	return &resumingClient{tr: tr, http: newSSEClient(t), user: user, bases: bases, rng: rand.New(rand.NewPCG(seed, 1))}
}

// run connects and reconnects until stop.
func (c *resumingClient) run(ctx context.Context) {
	last := ""
	failed := 0
	for attempt := 0; ctx.Err() == nil; attempt++ {
		instance := attempt % len(c.bases)
		query, header := resumeQuery(c.tr, c.user, last, attempt)
		if attempt == 0 {
			for k, v := range c.firstQuery {
				query[k] = v
			}
		}
		s, err := c.tr.Dial(ctx, c.http, c.bases[instance], query, header)
		if err != nil {
			failed++
			c.mu.Lock()
			c.lastDialErr = err
			c.mu.Unlock()
			sleepCtx(ctx, 20*time.Millisecond)
			continue
		}
		seg := resumeSegment{instance: instance, resumedFrom: last, viaHeader: header != "", failedDials: failed}
		failed = 0
		c.mu.Lock()
		if c.stopped {
			c.mu.Unlock()
			s.Close()
			return
		}
		c.cur = s
		cutNow := c.cutsPending > 0 && last != ""
		if cutNow {
			c.cutsPending--
		}
		c.mu.Unlock()
		if cutNow {
			s.Close()
		}
		for {
			f, err := s.Next()
			if err != nil {
				seg.end = err.Error()
				break
			}
			c.mu.Lock()
			if f.Control != "" {
				c.controls = append(c.controls, f)
			} else {
				c.events = append(c.events, f)
				c.eventSegment = append(c.eventSegment, len(c.segments))
				last = f.ID
				seg.events++
			}
			cutNow := c.cutsPending > 0
			if cutNow {
				c.cutsPending--
			}
			c.mu.Unlock()
			if cutNow {
				s.Close()
			}
		}
		s.Close()
		c.mu.Lock()
		c.cur = nil
		c.segments = append(c.segments, seg)
		c.mu.Unlock()
		sleepCtx(ctx, time.Duration(c.rng.IntN(50))*time.Millisecond)
	}
}

// finish waits, once everything was published (publishing began at
// start), until the client has every payload, stops it and checks it got
// each exactly once, in order.
func (c *resumingClient) finish(t *testing.T, start time.Time, payloads []string, cancel context.CancelFunc, wg *sync.WaitGroup) {
	t.Helper()
	published := time.Now()
	caughtUp := c.waitFor(t, len(payloads), 30*time.Second)
	t.Logf("published %d events in %v; the client had them all %v later", len(payloads),
		published.Sub(start).Round(time.Millisecond), caughtUp.Sub(published).Round(time.Millisecond))
	c.stop()
	cancel()
	wg.Wait()
	c.checkExactly(t, payloads)
}

// cut disconnects the client now, or as soon as it has a connection and
// an event id to resume from: without one it could not resume.
func (c *resumingClient) cut() {
	c.mu.Lock()
	s := c.cur
	if s == nil || len(c.events) == 0 {
		s = nil
		c.cutsPending++
	} else {
		// A second cut before run has taken the next connection must
		// end that one, not this one again.
		c.cur = nil
	}
	c.mu.Unlock()
	if s != nil {
		s.Close()
	}
}

// stop ends the client; run returns once ctx is cancelled too.
func (c *resumingClient) stop() {
	c.mu.Lock()
	c.stopped = true
	s := c.cur
	c.mu.Unlock()
	if s != nil {
		s.Close()
	}
}

func (c *resumingClient) received() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.events)
}

// waitFor waits until the client has n events, then a quiet half second
// more so that a duplicate sent after the last event is caught too. It
// returns when the client had n events.
func (c *resumingClient) waitFor(t *testing.T, n int, d time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(d)
	for c.received() < n {
		if time.Now().After(deadline) {
			c.report(t)
			if c.diagnose != nil {
				c.diagnose(t)
			}
			t.Fatalf("client has %d of %d events after %v", c.received(), n, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	caughtUp := time.Now()
	time.Sleep(500 * time.Millisecond)
	return caughtUp
}

// report logs the client's connections, for a failure.
func (c *resumingClient) report(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	for i, s := range c.segments {
		via := "query"
		if s.viaHeader {
			via = "header"
		}
		fmt.Fprintf(&b, "  connection %d: instance %d, resumed from %q (%s) after %d failed dials: %d events, ended: %s\n",
			i, s.instance, s.resumedFrom, via, s.failedDials, s.events, s.end)
	}
	t.Logf("%s client: %d events, %d controls, last dial error %v; connections:\n%s",
		c.tr.Name, len(c.events), len(c.controls), c.lastDialErr, b.String())
}

// checkExactly checks that the client got want, in order, each once, with
// increasing ids, and no control.
func (c *resumingClient) checkExactly(t *testing.T, want []string) {
	t.Helper()
	c.mu.Lock()
	events, segOf, controls := slices.Clone(c.events), slices.Clone(c.eventSegment), slices.Clone(c.controls)
	c.mu.Unlock()
	if len(controls) > 0 {
		c.report(t)
		t.Errorf("got %d controls, want none (every resume id was retained); first: %s", len(controls), controls[0])
	}
	index := make(map[string]int, len(want))
	for i, p := range want {
		index[p] = i
	}
	seen := make(map[string]int, len(events))
	for _, e := range events {
		seen[e.Data]++
	}
	var dups, missing, unknown int
	for p, n := range seen {
		if _, ok := index[p]; !ok {
			unknown += n
		} else if n > 1 {
			dups += n - 1
		}
	}
	for _, p := range want {
		if seen[p] == 0 {
			missing++
		}
	}
	for i := range max(len(events), len(want)) {
		if i < len(events) && i < len(want) && events[i].Data == want[i] {
			continue
		}
		c.report(t)
		got, gotSeg := "(none)", -1
		if i < len(events) {
			got, gotSeg = events[i].String(), segOf[i]
		}
		prev := "(none)"
		if i > 0 {
			prev = events[i-1].String()
		}
		earlier := ""
		if i < len(events) {
			if j := slices.IndexFunc(events[:i], func(e histFrame) bool { return e.Data == events[i].Data }); j >= 0 {
				earlier = fmt.Sprintf("; it came before as #%d: %s (connection %d)", j, events[j], segOf[j])
			}
		}
		t.Fatalf("got %d events, want %d: %d missing, %d duplicated, %d unknown; first difference at #%d: %s (connection %d), want %s; previous %s%s",
			len(events), len(want), missing, dups, unknown, i, got, gotSeg, want[min(i, len(want)-1)], prev, earlier)
	}
	var prev history.ID
	for i, e := range events {
		id, ok := history.ParseID(e.ID)
		if !e.HasID || !ok {
			t.Fatalf("event #%d has id %q (present %v), want a stream id", i, e.ID, e.HasID)
		}
		if i > 0 && !prev.Less(id) {
			t.Fatalf("event #%d has id %s after %s, want increasing ids", i, e.ID, events[i-1].ID)
		}
		prev = id
	}
}

// numbered returns n distinct events for user, in publish order.
func numbered(user string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = event(user, i)
	}
	return out
}

// randomCuts returns n distinct publish counts in [1, total), ascending:
// the moments the client is disconnected.
func randomCuts(rng *rand.Rand, n, total int) []int {
	set := map[int]bool{}
	for len(set) < n {
		set[1+rng.IntN(total-1)] = true
	}
	cuts := make([]int, 0, n)
	for k := range set {
		cuts = append(cuts, k)
	}
	sort.Ints(cuts)
	return cuts
}

// The tests' publisher is internal/testclient's too.
var (
	publishSteadily = testclient.PublishSteadily
	plainPublish    = testclient.PlainPublish
	publishNow      = testclient.PublishNow
	streamEntries   = testclient.StreamEntries
	waitRecorded    = testclient.WaitRecorded
)

// checkHistoryKeys checks that user's history is the only history key:
// nothing else (probes included) is recorded.
func checkHistoryKeys(t *testing.T, rdb *redis.Client, user string) {
	t.Helper()
	keys, err := rdb.Keys(t.Context(), "fanout:history:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{history.HistoryKey(user)}; !slices.Equal(keys, want) {
		t.Errorf("history keys %q, want only %q", keys, want)
	}
}

// checkStream checks that user's history is exactly want, with the ids the
// client got.
func checkStream(t *testing.T, rdb *redis.Client, user string, got []histFrame, want []string) {
	t.Helper()
	if n, err := rdb.XLen(t.Context(), history.HistoryKey(user)).Result(); err != nil || n != int64(len(want)) {
		t.Fatalf("XLEN %s = %d (%v), want %d", history.HistoryKey(user), n, err, len(want))
	}
	entries := streamEntries(t, rdb, user)
	for i, e := range entries {
		if e.Data != want[i] || e.ID != got[i].ID {
			t.Fatalf("history entry #%d is %s %s, want %s %s (as delivered)", i, e.ID, e.Data, got[i].ID, want[i])
		}
	}
	checkHistoryKeys(t, rdb, user)
}

// TestResumeOnAnotherInstanceAt20RandomDisconnectsGetsEveryPlainPublishOnce
// is the first acceptance test: three instances, 10 000 plain
// PUBLISHes at a steady rate, a client cut at 20 random moments that
// resumes each time on the next instance with its last id.
func TestResumeOnAnotherInstanceAt20RandomDisconnectsGetsEveryPlainPublishOnce(t *testing.T) {
	fanoutBinary(t)
	t.Parallel()
	type run struct {
		name string
		tr   histTransport
		env  map[string]string
	}
	var runs []run
	for _, tr := range historyTransports() {
		runs = append(runs, run{tr.Name, tr, nil})
	}
	// In user mode an instance subscribes to the user's channel when the
	// client arrives and unsubscribes a short grace period after it left,
	// and the recorder lease holder records from its pattern subscription:
	// every instance's place in the history starts over again and again.
	runs = append(runs, run{"websocket/SUBSCRIBE_MODE=user", historyTransports()[0], map[string]string{"SUBSCRIBE_MODE": "user", "SUBSCRIBE_GRACE": "300ms"}})
	for _, run := range runs {
		tr := run.tr
		t.Run(run.name, func(t *testing.T) {
			t.Parallel()
			r := testproc.StartRedis(t)
			env := map[string]string{"HISTORY_MAX_LEN": "20000", "LOG_LEVEL": "info"}
			for k, v := range run.env {
				env[k] = v
			}
			daemons, bases := startTestDaemons(t, r, 3, env)
			user := "resume-" + tr.Name
			seed := uint64(time.Now().UnixNano())
			t.Logf("seed %d", seed)
			rng := rand.New(rand.NewPCG(seed, 2))

			c := newResumingClient(t, tr, user, bases, seed)
			c.diagnose = diagnoseShards(daemons, user)
			ctx, cancel := context.WithCancel(t.Context())
			var wg sync.WaitGroup
			wg.Go(func() { c.run(ctx) })
			defer wg.Wait()
			defer cancel()
			defer c.stop()
			// The first connection has no id to resume from: it must be
			// live before the first event.
			testproc.Eventually(t, 5*time.Second, "first connection registered", func() bool {
				return daemons[0].connectionCount(user) == 1
			})

			payloads := numbered(user, 10000)
			cuts := randomCuts(rng, 20, len(payloads))
			pub := r.Client()
			start := time.Now()
			err := publishSteadily(ctx, payloads, 10, 10*time.Millisecond, plainPublish(pub, user), func(sent int) {
				for len(cuts) > 0 && cuts[0] <= sent {
					cuts = cuts[1:]
					c.cut()
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			c.finish(t, start, payloads, cancel, &wg)
			checkStream(t, pub, user, c.events, payloads)
			if n := len(c.segments); n != 21 {
				c.report(t)
				t.Fatalf("%d connections, want 21 (20 cuts)", n)
			}
		})
	}
}

// waitSubscribed waits until the fanout process p has subscribed to
// Redis, failing at once if it exits.
func waitSubscribed(t *testing.T, p *fanout) {
	t.Helper()
	p.WaitOutput(t, 20*time.Second, "Subscribed to Redis")
}

// TestResumeWithThePublisherWhileEveryInstanceIsDownLosesNothing is the
// issue's second acceptance test: the events come from history.Publisher
// (what `fanout publish` runs), and every instance (a real fanout process)
// is stopped for a while in the middle, publishing going on.
func TestResumeWithThePublisherWhileEveryInstanceIsDownLosesNothing(t *testing.T) {
	fanoutBinary(t)
	t.Parallel()
	for _, tr := range historyTransports() {
		t.Run(tr.Name, func(t *testing.T) {
			t.Parallel()
			r := testproc.StartRedis(t)
			var ports []int
			for len(ports) < 3 {
				if p := testproc.FreePort(t); !slices.Contains(ports, p) {
					ports = append(ports, p)
				}
			}
			var bases []string
			for _, p := range ports {
				bases = append(bases, "http://127.0.0.1:"+strconv.Itoa(p))
			}
			var running []*fanout
			startAll := func() {
				running = running[:0]
				for _, port := range ports {
					p := launchFanout(t, r.Addr(), port, "HISTORY_MAX_LEN=20000")
					running = append(running, p)
				}
				for _, p := range running {
					waitSubscribed(t, p)
				}
			}
			stopAll := func() {
				for _, p := range running {
					p.Signal(t, syscall.SIGTERM)
				}
				for _, p := range running {
					p.WaitExit(t, 15*time.Second)
				}
			}
			startAll()

			user := "publisher-" + tr.Name
			seed := uint64(time.Now().UnixNano())
			t.Logf("seed %d", seed)
			rng := rand.New(rand.NewPCG(seed, 2))
			c := newResumingClient(t, tr, user, bases, seed)
			// Nothing tells a test when a process has registered a
			// connection: the first one asks for every retained event
			// (late join), so that it misses none published before then.
			c.firstQuery = url.Values{"history": {"20000"}}
			ctx, cancel := context.WithCancel(t.Context())
			var wg sync.WaitGroup
			wg.Go(func() { c.run(ctx) })
			defer wg.Wait()
			defer cancel()
			defer c.stop()

			payloads := numbered(user, 10000)
			cuts := randomCuts(rng, 20, len(payloads))
			// The publisher is `fanout publish` reading JSON lines on its
			// stdin, as a shell pipeline would run it.
			pubCmd := exec.Command(fanoutBinary(t), "publish", "--username", user)
			pubCmd.Env = append(os.Environ(), "REDIS_HOST=127.0.0.1", "REDIS_PORT="+strconv.Itoa(r.Port), "HISTORY_MAX_LEN=20000")
			stdin, err := pubCmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			// Its ids go to pubOut, anything else to the process's Out.
			var pubOut testproc.Buffer
			pubCmd.Stdout = &pubOut
			pubProc := testproc.Start(t, pubCmd)
			var sent atomic.Int64
			publishErr := make(chan error, 1)
			start := time.Now()
			wg.Go(func() {
				publishErr <- publishSteadily(ctx, payloads, 10, 12*time.Millisecond, func(ctx context.Context, batch []string) error {
					_, err := io.WriteString(stdin, strings.Join(batch, "\n")+"\n")
					return err
				}, func(n int) {
					for len(cuts) > 0 && cuts[0] <= n {
						cuts = cuts[1:]
						c.cut()
					}
					sent.Store(int64(n))
				})
			})
			waitSent := func(n int) {
				testproc.Eventually(t, 30*time.Second, fmt.Sprintf("%d events published", n), func() bool { return sent.Load() >= int64(n) })
			}
			waitSent(4000)
			stopAll()
			down := time.Now()
			waitSent(6000)
			startAll()
			t.Logf("every instance down from event ~4000 to ~%d, for %v", sent.Load(), time.Since(down).Round(time.Millisecond))
			if err := <-publishErr; err != nil {
				t.Fatal(err)
			}
			stdin.Close()
			pubProc.WaitExit(t, 30*time.Second)
			if ids := strings.Fields(pubOut.String()); len(ids) != len(payloads) {
				t.Fatalf("fanout publish printed %d ids for %d events", len(ids), len(payloads))
			}
			c.finish(t, start, payloads, cancel, &wg)
			checkStream(t, r.Client(), user, c.events, payloads)
		})
	}
}

// openHistory opens one stream for a test that reads it frame by frame.
func openHistory(t *testing.T, tr histTransport, baseURL string, query url.Values, lastEventID string) histStream {
	t.Helper()
	s, err := tr.Dial(t.Context(), newSSEClient(t), baseURL, query, lastEventID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// nextFrame reads the next frame within 5 s.
func nextFrame(t *testing.T, s histStream) histFrame {
	t.Helper()
	f, err := s.NextWithin(5 * time.Second)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return f
}

// expectEvents reads len(want) frames, which must be want's events in
// order, with their ids.
func expectEvents(t *testing.T, s histStream, want []history.Event) {
	t.Helper()
	for i, w := range want {
		f := nextFrame(t, s)
		if f.Control != "" || f.ID != w.ID || f.Data != w.Data {
			t.Fatalf("frame %d of %d: %s, want event %s %s", i+1, len(want), f, w.ID, w.Data)
		}
	}
}

// expectLive publishes payload and reads it as the next frame, with an id
// after after.
func expectLive(t *testing.T, s histStream, rdb *redis.Client, user, payload, after string) {
	t.Helper()
	publishNow(t, rdb, user, payload)
	f := nextFrame(t, s)
	id, ok := history.ParseID(f.ID)
	prev, _ := history.ParseID(after)
	if f.Control != "" || f.Data != payload || !ok || !prev.Less(id) {
		t.Fatalf("live frame %s, want event %s with an id after %s", f, payload, after)
	}
}

// TestResumeThroughTheReadmesNginxOnAnotherInstanceGetsTheMissedEvents:
// the instance a client is on stops (a deploy); the client comes back
// through the README's nginx, lands on another instance and gets what was
// published meanwhile, then live events.
func TestResumeThroughTheReadmesNginxOnAnotherInstanceGetsTheMissedEvents(t *testing.T) {
	fanoutBinary(t)
	t.Parallel()
	for _, tr := range historyTransports() {
		t.Run(tr.Name, func(t *testing.T) {
			r := testproc.StartRedis(t)
			daemons, backends := startInstances(t, r.Addr(), 3)
			if tr.Name == "sse" && !strings.Contains(readmeNginxBlock(t), "location /events") {
				t.Fatal("README's nginx block has no location /events: SSE cannot go through it")
			}
			base := "http://127.0.0.1:" + strconv.Itoa(startNginx(t, backends))
			const user = "behind-nginx"
			holder := func() int {
				for i, td := range daemons {
					if td.Exited() {
						continue
					}
					if td.connections(user) == 1 {
						return i
					}
				}
				return -1
			}
			s := openHistory(t, tr, base, url.Values{"username": {user}}, "")
			testproc.Eventually(t, 5*time.Second, "connection registered", func() bool { return holder() >= 0 })
			first := holder()

			pub := r.Client()
			payloads := numbered(user, 20)
			publishNow(t, pub, user, payloads[:10]...)
			last := ""
			for i := range 10 {
				f := nextFrame(t, s)
				if f.Control != "" || f.Data != payloads[i] || !f.HasID {
					t.Fatalf("frame %d: %s, want %s with an id", i, f, payloads[i])
				}
				last = f.ID
			}

			var stopped sync.WaitGroup
			stopped.Go(func() { _ = daemons[first].Cmd.Process.Signal(syscall.SIGTERM); <-daemons[first].Done() })
			// WebSocket: close 1001 through nginx; SSE: the response ends.
			if f, err := s.NextWithin(10 * time.Second); err == nil {
				t.Fatalf("got %s from the stopping instance, want the end of the stream", f)
			}
			stopped.Wait()
			publishNow(t, pub, user, payloads[10:]...)
			waitRecorded(t, pub, user, payloads[19])

			query, header := resumeQuery(tr, user, last, 0)
			s = openHistory(t, tr, base, query, header)
			testproc.Eventually(t, 5*time.Second, "resumed connection registered", func() bool { return holder() >= 0 })
			if now := holder(); now == first {
				t.Fatalf("resumed on instance %d, the stopped one", now)
			}
			entries := streamEntries(t, pub, user)
			expectEvents(t, s, entries[10:])
			expectLive(t, s, pub, user, event(user, 20), entries[19].ID)
		})
	}
}
