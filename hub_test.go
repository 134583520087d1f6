package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// newTestHub returns a hub whose clients have the given queue bounds.
func newTestHub(queueSize, queueBytes int) *Hub {
	return newHub(clientSettings{sendQueueSize: queueSize, sendQueueBytes: queueBytes},
		slog.New(slog.NewTextHandler(io.Discard, nil)), &Stats{})
}

// noSocket is the transport of a client without a connection: its write
// side never runs, so a test reads the client's queue directly.
type noSocket struct{ pingInterval time.Duration }

func (noSocket) startWriter()               {}
func (noSocket) claimable() bool            { return false }
func (noSocket) writeNow(*message)          { panic("noSocket: writeNow") }
func (noSocket) abort()                     {}
func (noSocket) controls() bool             { return false }
func (n noSocket) pingEvery() time.Duration { return n.pingInterval }

// newSocketlessClient makes a client of username whose write side never
// runs.
func newSocketlessClient(h *Hub, username string) *Client {
	c := newClient(h, username, "test")
	c.t = noSocket{h.settings.pingInterval}
	return &c
}

// addClient adds a connection-less client; it never starts a write pump,
// so the test reads its queue directly.
func addClient(t testing.TB, h *Hub, username string) *Client {
	t.Helper()
	if err := h.reserve(username); err != nil {
		t.Fatal(err)
	}
	c := newSocketlessClient(h, username)
	if err := h.add(c); err != nil {
		t.Fatal(err)
	}
	return c
}

// msgOf is a message of s, as the subscriber makes it.
func msgOf(s string) *message {
	return &message{data: []byte(s), received: time.Now()}
}

func queued(c *Client) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, m := range c.sendQueue {
		out = append(out, string(m.data))
	}
	return out
}

func TestBroadcastReachesOnlyTheUsersClientsInOrder(t *testing.T) {
	h := newTestHub(100, 1<<20)
	a1, a2 := addClient(t, h, "alice"), addClient(t, h, "alice")
	others := []*Client{addClient(t, h, "alice2"), addClient(t, h, "ALICE"), addClient(t, h, "alic")}

	for i := range 3 {
		if n := h.broadcast("alice", msgOf(fmt.Sprint(i))); n != 2 {
			t.Fatalf("broadcast reached %d clients, want 2", n)
		}
	}
	for _, c := range []*Client{a1, a2} {
		if got := strings.Join(queued(c), ","); got != "0,1,2" {
			t.Fatalf("alice queue %q, want 0,1,2", got)
		}
	}
	for _, c := range others {
		if q := queued(c); len(q) != 0 {
			t.Fatalf("%s received %v", c.username, q)
		}
	}
	if n := h.broadcast("nobody", msgOf("x")); n != 0 {
		t.Fatalf("broadcast to a user without connections reached %d", n)
	}
}

func TestUnregisterReportsRemainingAndForgetsEmptyUsers(t *testing.T) {
	h := newTestHub(10, 1<<20)
	a, b := addClient(t, h, "u"), addClient(t, h, "u")
	if h.users.Load() != 1 || h.connections.Load() != 2 {
		t.Fatalf("users %d connections %d, want 1 and 2", h.users.Load(), h.connections.Load())
	}
	if n := h.unregister(a); n != 1 {
		t.Fatalf("remaining %d, want 1", n)
	}
	if n := h.unregister(a); n != 1 {
		t.Fatalf("second unregister of the same client changed the count to %d", n)
	}
	if n := h.unregister(b); n != 0 {
		t.Fatalf("remaining %d, want 0", n)
	}
	if h.users.Load() != 0 || h.connections.Load() != 0 || h.connectionCount("u") != 0 {
		t.Fatal("empty user not forgotten")
	}
}

func TestSendQueueOverflowClosesOnlyThatClient(t *testing.T) {
	cases := []struct {
		name              string
		size, bytes, msgs int
		msgLen            int
	}{
		{"by count", 4, 1 << 20, 5, 10},
		{"by bytes", 1000, 100, 11, 10},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHub(tc.size, tc.bytes)
			slow, other := addClient(t, h, "slow"), addClient(t, h, "other")
			msg := msgOf(strings.Repeat("x", tc.msgLen))
			for i := 0; i < tc.msgs-1; i++ {
				if r := slow.enqueue(msg, false); r != enqueued {
					t.Fatalf("message %d refused (%v) before the bound", i, r)
				}
			}
			if r := slow.enqueue(msg, false); r != enqueueOverflow {
				t.Fatalf("message past the bound: %v, want overflow", r)
			}
			if r := slow.enqueue(msg, false); r != enqueueClosing {
				t.Fatalf("message after overflow: %v, want closing", r)
			}
			if len(queued(slow)) != 0 || slow.queuedBytes != 0 {
				t.Fatal("overflowed queue not released")
			}
			if *slow.closing != disconnectSlow || h.stats.SlowDisconnects.Load() != 1 {
				t.Fatal("overflow did not close the client as slow")
			}
			if h.broadcast("other", msg) != 1 || other.closing != nil {
				t.Fatal("another client was affected")
			}
			if h.broadcast("slow", msg) != 0 || h.stats.FramesDropped.Load() != 1 {
				t.Fatal("a message to a closing client was not counted as dropped")
			}
		})
	}
}

func TestEmptyQueueTakesAMessageLargerThanItsByteBound(t *testing.T) {
	h := newTestHub(10, 1024)
	c := addClient(t, h, "u")
	if r := c.enqueue(msgOf(strings.Repeat("x", 4096)), false); r != enqueued {
		t.Fatalf("large message into an empty queue: %v", r)
	}
	if r := c.enqueue(msgOf("x"), false); r != enqueueOverflow {
		t.Fatalf("message behind it: %v, want overflow", r)
	}
}

func TestWritePumpWorkIsTakenInOneSwap(t *testing.T) {
	h := newTestHub(10, 1<<20)
	c := addClient(t, h, "u")
	h.broadcast("u", msgOf("a"))
	h.broadcast("u", msgOf("b"))
	w, idle := c.takeWork(nil)
	if idle || len(w.batch) != 2 || w.pong != nil || w.ping || w.closing != nil {
		t.Fatalf("idle %v, batch of %d, pong %v, ping %v, closing %v", idle, len(w.batch), w.pong, w.ping, w.closing)
	}
	if _, idle := c.takeWork(w.batch); !idle {
		t.Fatal("nothing left to write, but the pump was not told to stop")
	}
	h.broadcast("u", msgOf("c"))
	c.disconnect(disconnectShutdown)
	c.disconnect(disconnectSlow) // only the first reason counts
	w, _ = c.takeWork(nil)
	if len(w.batch) != 1 || string(w.batch[0].data) != "c" || *w.closing != disconnectShutdown {
		t.Fatalf("after close: batch of %d, closing %v; queued messages go before the close", len(w.batch), w.closing)
	}
	if f, b := h.queuedFrames.Load(), h.queuedBytes.Load(); f != 0 || b != 0 {
		t.Fatalf("send-queue pressure %d frames, %d bytes after every queue was taken", f, b)
	}
}

func TestOneWritePumpAtATimeAndOnlyWhileThereIsWork(t *testing.T) {
	h := newTestHub(10, 1<<20)
	c := addClient(t, h, "u")
	c.mu.Lock()
	if !c.takeRightLocked() {
		t.Fatal("an idle client refused to start its write pump")
	}
	if c.takeRightLocked() {
		t.Fatal("a second write pump could start beside the first")
	}
	c.mu.Unlock()
	if _, idle := c.takeWork(nil); !idle {
		t.Fatal("an empty client kept its pump")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.takeRightLocked() {
		t.Fatal("the write right was not given back when the pump went idle")
	}
}

func TestSendQueuePressureFollowsEnqueueTakeAndOverflow(t *testing.T) {
	h := newTestHub(3, 1<<20)
	b := addClient(t, h, "b")
	addClient(t, h, "a")
	h.broadcast("a", msgOf("12345"))
	h.broadcast("a", msgOf("123"))
	h.broadcast("b", msgOf("1"))
	if f, n := h.queuedFrames.Load(), h.queuedBytes.Load(); f != 3 || n != 9 {
		t.Fatalf("pressure %d frames %d bytes, want 3 and 9", f, n)
	}
	h.broadcast("a", msgOf("x"))
	h.broadcast("a", msgOf("y")) // over 3 frames: a's queue is dropped
	if f, n := h.queuedFrames.Load(), h.queuedBytes.Load(); f != 1 || n != 1 {
		t.Fatalf("after a overflowed: %d frames %d bytes, want b's 1 and 1", f, n)
	}
	b.mu.Lock()
	b.dropQueueLocked() // what closeSocket does when the connection ends
	b.mu.Unlock()
	if f, n := h.queuedFrames.Load(), h.queuedBytes.Load(); f != 0 || n != 0 {
		t.Fatalf("after b ended: %d frames %d bytes, want 0", f, n)
	}
}

func TestRegisterIsRefusedOnceShutdownBegins(t *testing.T) {
	h := newTestHub(10, 1<<20)
	if err := h.reserve("late"); err != nil {
		t.Fatal(err)
	}
	if err := h.shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := h.add(newSocketlessClient(h, "late")); err != errHubClosed {
		t.Fatalf("add after shutdown: %v, want errHubClosed", err)
	}
	if n := h.slots.Load(); n != 0 {
		t.Fatalf("the refused connection still holds a slot: slots = %d", n)
	}
	if err := h.reserve("later"); err != errHubClosed {
		t.Fatalf("reserve after shutdown: %v, want errHubClosed", err)
	}
}

func TestReserveEnforcesPerUserAndInstanceLimits(t *testing.T) {
	h := newTestHub(10, 1<<20)
	h.setLimits(3, 2)

	a1 := addClient(t, h, "alice")
	if err := h.reserve("alice"); err != nil {
		t.Fatalf("alice's second connection: %v", err)
	}
	// A reservation counts like an open connection.
	if err := h.reserve("alice"); err != errUserLimit {
		t.Fatalf("alice's third connection: %v, want errUserLimit", err)
	}
	addClient(t, h, "bob")
	if err := h.reserve("carol"); err != errInstanceLimit {
		t.Fatalf("fourth connection on the instance: %v, want errInstanceLimit", err)
	}

	// A failed upgrade gives its slot back; so does a closed connection.
	h.release("alice")
	if err := h.reserve("carol"); err != nil {
		t.Fatalf("carol after alice's failed upgrade: %v", err)
	}
	h.release("carol")
	h.unregister(a1)
	if err := h.reserve("alice"); err != nil {
		t.Fatalf("alice after one of hers closed: %v", err)
	}
	if err := h.reserve("alice"); err != nil {
		t.Fatalf("alice's second slot: %v", err)
	}
	if err := h.reserve("dave"); err != errInstanceLimit {
		t.Fatalf("instance full again: %v, want errInstanceLimit", err)
	}
	h.release("alice")
	h.release("alice")
	if n, left := h.slots.Load(), len(h.shard("alice").reserved); n != 1 || left != 0 {
		t.Fatalf("slots = %d (want 1: bob), alice reservations left = %d", n, left)
	}
}

// BenchmarkBroadcast queues an event for a user's connections; their
// write pumps' rounds are played every 32 events (a queue that grew past
// maxKeptQueue is not kept for reuse, so a longer backlog costs its
// reallocation).
//
//	go test -run '^$' -bench Broadcast -benchmem -count 3
func BenchmarkBroadcast(b *testing.B) {
	for _, conns := range []int{1, 100} {
		b.Run(fmt.Sprintf("conns=%d", conns), func(b *testing.B) {
			h := newTestHub(1<<20, 1<<30)
			clients := make([]*Client, conns)
			for i := range clients {
				clients[i] = addClient(b, h, "org_acme")
			}
			for i := range 1000 {
				addClient(b, h, fmt.Sprintf("user%d", i))
			}
			msg := msgOf(`{"type":"node_completed","run_id":"flight-search:186e185fcb360f00"}`)
			batches := make([][]*message, conns)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				h.broadcast("org_acme", msg)
				if i%32 == 31 {
					for k, c := range clients {
						w, _ := c.takeWork(batches[k])
						batches[k] = w.batch
					}
				}
			}
		})
	}
}

func TestPingTickKeepsPingsInsideThePongWait(t *testing.T) {
	for _, tc := range []struct{ interval, wait, want time.Duration }{
		{54 * time.Second, 60 * time.Second, 3 * time.Second},
		{50 * time.Millisecond, 2 * time.Second, 12500 * time.Microsecond},
		{50 * time.Millisecond, 300 * time.Millisecond, 12500 * time.Microsecond},
		{time.Second, time.Second + time.Microsecond, time.Millisecond},
	} {
		if got := pingTick(tc.interval, tc.wait); got != tc.want {
			t.Errorf("pingTick(%v, %v) = %v, want %v", tc.interval, tc.wait, got, tc.want)
		}
	}
}

func TestLargeFanOutsAreEncodedOnce(t *testing.T) {
	for _, n := range []int{preparedMin - 1, preparedMin} {
		h := newTestHub(10, 1<<20)
		var clients []*Client
		for range n {
			clients = append(clients, addClient(t, h, "org"))
		}
		msg := msgOf(`{"type":"x"}`)
		h.broadcast("org", msg)
		if got, want := msg.prepared != nil, n >= preparedMin; got != want {
			t.Fatalf("%d connections: prepared %v, want %v", n, got, want)
		}
		if w, _ := clients[n-1].takeWork(nil); len(w.batch) != 1 || w.batch[0] != msg {
			t.Fatalf("%d connections: the message was not queued as it is", n)
		}
	}
}

func TestLargeFanOutKeepsEveryConnectionsOrder(t *testing.T) {
	// More than writeNowMax connections: idle ones are written by fan-out
	// goroutines that broadcast does not wait for, busy ones by their
	// pumps; every connection must still get every event, in order.
	td := startDaemon(t, startRedis(t), map[string]string{"LOG_LEVEL": "warn"})
	const n, events = 60, 300
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i] = td.dial("org")
	}
	eventually(t, 5*time.Second, "registered", func() bool { return td.d.hub.connectionCount("org") == n })
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			for i := range events {
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, data, err := c.ReadMessage()
				if want := fmt.Sprintf(`{"n":%d}`, i); err != nil || string(data) != want {
					errs <- fmt.Errorf("got %s (%v), want %s", data, err, want)
					return
				}
			}
		})
	}
	for i := range events {
		td.d.hub.broadcast("org", msgOf(fmt.Sprintf(`{"n":%d}`, i)))
		if i%50 == 0 {
			time.Sleep(20 * time.Millisecond) // idle again: the next ones are claimed
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestSendQueueGaugesNeverReadBelowZeroWhilePumpsTakeTheirWork(t *testing.T) {
	// A write pump may take a message off its queue (and off the gauges)
	// while broadcast is still handing it to the user's other connections:
	// the gauges must already count it then.
	h := newTestHub(1<<20, 1<<30)
	var clients []*Client
	for range 500 {
		clients = append(clients, addClient(t, h, "org"))
	}
	stop := make(chan struct{})
	var lowest atomic.Int64
	var pump sync.WaitGroup
	pump.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, c := range clients[:4] {
				c.takeWork(nil)
				lowest.Store(min(lowest.Load(), h.queuedFrames.Load(), h.queuedBytes.Load()))
			}
		}
	})
	for range 2000 {
		h.broadcast("org", msgOf(`{"n":1}`))
	}
	close(stop)
	pump.Wait()
	if low := lowest.Load(); low < 0 {
		t.Fatalf("a send-queue gauge read %d", low)
	}
}
