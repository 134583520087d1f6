package e2e

import (
	"context"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"fanout/history"
	"fanout/internal/testproc"
)

// What the Sentinel and Cluster tests share: a publisher that keeps
// publishing numbered events through the project's publish path while
// Redis fails under it, clients that resume, and the measure of the gap a
// failure leaves in live delivery.

// redisAddrServer names a node started by other means, so that
// startDaemon's environment has an address (the Sentinel or Cluster
// variables take precedence over it).
func redisAddrServer(t *testing.T, addr string) *testproc.Redis {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	p, _ := strconv.Atoi(port)
	return testproc.NewRedis(t, p)
}

// steadyPublisher publishes, in rounds every interval, one numbered event
// to each of its users with history.Publisher, through whatever Redis
// fails under it: an event whose publish failed is not tried again (it
// may or may not have reached Redis), the next one follows.
type steadyPublisher struct {
	pub   *history.Publisher
	users []string
	every time.Duration
	// watch is the user whose publishes stats times (all when "").
	watch string

	mu sync.Mutex
	// sent are the payloads published without an error, per user, and
	// tried every payload published, failed or not; failed counts the
	// publishes that failed.
	sent, tried map[string][]string
	failed      int
	// failure is when markFailure was called; firstFailed, when a publish
	// first failed after it, in round failedRound; firstOK, when one
	// first succeeded after that.
	failure, firstFailed, firstOK time.Time
	failedRound                   int
}

func newSteadyPublisher(pub *history.Publisher, users []string, every time.Duration) *steadyPublisher {
	return &steadyPublisher{pub: pub, users: users, every: every, sent: make(map[string][]string), tried: make(map[string][]string)}
}

// run publishes until ctx ends.
func (p *steadyPublisher) run(ctx context.Context) {
	for round := 0; ctx.Err() == nil; round++ {
		for _, u := range p.users {
			payload := `{"event":"node_completed","user":"` + u + `","n":` + strconv.Itoa(round) + `}`
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err := p.pub.Publish(pctx, u, []byte(payload))
			cancel()
			p.mu.Lock()
			p.tried[u] = append(p.tried[u], payload)
			switch {
			case err != nil:
				p.failed++
				if !p.failure.IsZero() && p.firstFailed.IsZero() {
					p.firstFailed, p.failedRound = time.Now(), round
				}
			default:
				p.sent[u] = append(p.sent[u], payload)
				if !p.firstFailed.IsZero() && p.firstOK.IsZero() && (p.watch == "" || p.watch == u) {
					p.firstOK = time.Now()
				}
			}
			p.mu.Unlock()
		}
		sleepCtx(ctx, p.every)
	}
}

// publishUntilFlowing runs p until the returned stop is called (more than
// once is fine) and returns once every client has 5 events; ctx ends
// with stop.
func publishUntilFlowing(t *testing.T, p *steadyPublisher, clients map[string]*resumingClient) (ctx context.Context, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { p.run(ctx) })
	stop = func() {
		cancel()
		wg.Wait()
	}
	t.Cleanup(stop)
	testproc.Eventually(t, 10*time.Second, "events flowing to every client", func() bool {
		for _, c := range clients {
			if c.received() < 5 {
				return false
			}
		}
		return true
	})
	return ctx, stop
}

// markFailure notes that Redis is failing from now on.
func (p *steadyPublisher) markFailure() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failure, p.firstFailed, p.firstOK = time.Now(), time.Time{}, time.Time{}
}

// failedSince waits until a publish has failed since markFailure, and
// returns its round: every event of a later round was published once
// Redis was seen failing.
func (p *steadyPublisher) failedSince(t *testing.T) int {
	t.Helper()
	testproc.Eventually(t, 10*time.Second, "a publish failing", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return !p.firstFailed.IsZero()
	})
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failedRound
}

// stats returns the publishes that succeeded and failed, and how long
// after markFailure they succeeded again once failing.
func (p *steadyPublisher) stats() (sent, failed int, recovered time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.sent {
		sent += len(s)
	}
	if !p.firstOK.IsZero() {
		recovered = p.firstOK.Sub(p.failure)
	}
	return sent, p.failed, recovered
}

// gapWatch is a plain WebSocket client per instance that timestamps each
// event it receives: the gap a failure leaves is from the failure to the
// first event received that was published after it.
type gapWatch struct {
	user  string
	conns []*websocket.Conn
	mu    sync.Mutex
	// got holds, per connection, each event's payload and receive time.
	got [][]stamped
}

type stamped struct {
	payload string
	at      time.Time
}

func watchGaps(t *testing.T, daemons []*testDaemon, user string) *gapWatch {
	g := &gapWatch{user: user, got: make([][]stamped, len(daemons))}
	for i, td := range daemons {
		conn := td.dial(user)
		g.conns = append(g.conns, conn)
		go func() {
			for {
				_, msg, err := conn.ReadMessage()
				if err != nil {
					return
				}
				g.mu.Lock()
				g.got[i] = append(g.got[i], stamped{string(msg), time.Now()})
				g.mu.Unlock()
			}
		}()
	}
	t.Cleanup(func() {
		for _, c := range g.conns {
			_ = c.Close()
		}
	})
	return g
}

// gaps returns, per instance, how long after failure the first event
// published after since (per pub) arrived; -1 when none did.
func (g *gapWatch) gaps(failure time.Time, publishedAfter func(payload string) bool) []time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]time.Duration, len(g.got))
	for i, evs := range g.got {
		out[i] = -1
		for _, e := range evs {
			if e.at.After(failure) && publishedAfter(e.payload) {
				out[i] = e.at.Sub(failure)
				break
			}
		}
	}
	return out
}

// roundOf returns the round number n of a steadyPublisher payload.
func roundOf(payload string) int {
	i := strings.LastIndex(payload, `"n":`)
	if i < 0 {
		return -1
	}
	n, _ := strconv.Atoi(strings.TrimSuffix(payload[i+4:], "}"))
	return n
}

// publishedRound returns the round the publisher is at now.
func (p *steadyPublisher) round() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := -1
	for _, s := range p.sent {
		if len(s) > 0 {
			n = max(n, roundOf(s[len(s)-1]))
		}
	}
	return n
}

// readyWatch polls each instance's /ready every 10 ms: whether each was
// ever not ready, and when it was ready again after that.
type readyWatch struct {
	notReady []atomic.Bool
	mu       sync.Mutex
	back     []time.Time
	wait     func()
}

func watchReady(ctx context.Context, daemons []*testDaemon) *readyWatch {
	w := &readyWatch{notReady: make([]atomic.Bool, len(daemons)), back: make([]time.Time, len(daemons))}
	var wg sync.WaitGroup
	for i, td := range daemons {
		wg.Go(func() {
			for ctx.Err() == nil {
				ok := td.readyStatus() == http.StatusOK
				switch {
				case !ok:
					w.notReady[i].Store(true)
				case w.notReady[i].Load():
					w.mu.Lock()
					if w.back[i].IsZero() {
						w.back[i] = time.Now()
					}
					w.mu.Unlock()
				}
				sleepCtx(ctx, 10*time.Millisecond)
			}
		})
	}
	w.wait = wg.Wait
	return w
}

// readyAfter returns, per instance, how long after since it was ready
// again (-1: not yet, or never not ready).
func (w *readyWatch) readyAfter(since time.Time) []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]time.Duration, len(w.back))
	for i, b := range w.back {
		out[i] = -1
		if !b.IsZero() {
			out[i] = b.Sub(since).Round(time.Millisecond)
		}
	}
	return out
}

// resumeAll has every client resume now (with its last id, on the next
// instance), then waits until each has every event want holds for its
// user, and checks it got each once, in order, with nothing else but
// events that never reached Redis's history.
func resumeAll(t *testing.T, clients map[string]*resumingClient, want func(user string) []history.Event, lost func(user string) map[string]bool) {
	t.Helper()
	for _, c := range clients {
		c.cut()
	}
	for user, c := range clients {
		entries := want(user)
		c.waitForAll(t, entries, 30*time.Second)
		c.checkHolds(t, entries, lost(user))
	}
}

// waitForAll waits until the client holds every payload of entries.
func (c *resumingClient) waitForAll(t *testing.T, entries []history.Event, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		c.mu.Lock()
		have := make(map[string]bool, len(c.events))
		for _, e := range c.events {
			have[e.Data] = true
		}
		c.mu.Unlock()
		var missing []history.Event
		for _, e := range entries {
			if !have[e.Data] {
				missing = append(missing, e)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			c.report(t)
			if c.diagnose != nil {
				c.diagnose(t)
			}
			c.mu.Lock()
			tail := c.events[max(0, len(c.events)-8):]
			c.mu.Unlock()
			t.Fatalf("%s: %d of the %d events in the history never reached the client after %v: %v; the client's last: %v",
				c.user, len(missing), len(entries), d, missing, tail)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkHolds checks the client got each of entries once, in order, and
// otherwise only payloads lost holds (published, delivered, then lost
// with the master that had not replicated them).
func (c *resumingClient) checkHolds(t *testing.T, entries []history.Event, lost map[string]bool) {
	t.Helper()
	c.mu.Lock()
	events := slices.Clone(c.events)
	c.mu.Unlock()
	pos := make(map[string]int, len(entries))
	for i, e := range entries {
		pos[e.Data] = i
	}
	last := -1
	seen := make(map[string]int)
	for k, e := range events {
		if !e.HasID {
			// Delivered while its recording failed (the master died
			// under it): it may come again, with its id, from the
			// history; the one with an id is checked.
			continue
		}
		if j, dup := seen[e.Data]; dup {
			c.report(t)
			t.Fatalf("%s: got %s as #%d, and before as #%d: %s (%d events)", c.user, e, k, j, events[j], len(events))
		}
		seen[e.Data] = k
		i, ok := pos[e.Data]
		switch {
		case !ok && !lost[e.Data]:
			c.report(t)
			t.Fatalf("%s: got %s, which is not in the history", c.user, e)
		case ok && i < last:
			c.report(t)
			t.Fatalf("%s: got %s out of order", c.user, e)
		case ok:
			last = i
		}
	}
}

// historyOf reads user's whole history through rdb with layout.
func historyOf(t *testing.T, rdb redis.Cmdable, layout history.Layout, user string) []history.Event {
	t.Helper()
	evs, err := layout.After(context.Background(), rdb, user, "", 100000)
	if err != nil {
		t.Fatalf("read %s's history: %v", user, err)
	}
	return evs
}

// startResumingClients starts a WebSocket resumingClient per user over
// bases, and stops them at cleanup.
func startResumingClients(t *testing.T, users, bases []string) map[string]*resumingClient {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	clients := make(map[string]*resumingClient, len(users))
	for i, u := range users {
		c := newResumingClient(t, historyTransports()[0], u, slices.Concat(bases[i%len(bases):], bases[:i%len(bases)]), uint64(i))
		clients[u] = c
		wg.Go(func() { c.run(ctx) })
	}
	t.Cleanup(func() {
		for _, c := range clients {
			c.stop()
		}
		cancel()
		wg.Wait()
	})
	// Connected (the 101 follows the registration) before anything is
	// published: a first connection has nothing to resume from.
	testproc.Eventually(t, 10*time.Second, "every client connected", func() bool {
		for _, c := range clients {
			c.mu.Lock()
			connected := c.cur != nil
			c.mu.Unlock()
			if !connected {
				return false
			}
		}
		return true
	})
	return clients
}

// lostPayloads returns, for user, the payloads published that the history
// does not hold: those whose publish failed, and those acknowledged by a
// master that died before its replica had them. Either may have been
// delivered live before.
func (p *steadyPublisher) lostPayloads(user string, entries []history.Event) map[string]bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	have := make(map[string]bool, len(entries))
	for _, e := range entries {
		have[e.Data] = true
	}
	lost := make(map[string]bool)
	for _, s := range p.tried[user] {
		if !have[s] {
			lost[s] = true
		}
	}
	return lost
}
