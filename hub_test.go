package main

import (
	"fmt"
	"github.com/gorilla/websocket"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// newTestHub returns a hub whose clients have the given queue bounds.
func newTestHub(queueSize, queueBytes int) *Hub {
	return newHub(clientSettings{sendQueueSize: queueSize, sendQueueBytes: queueBytes},
		slog.New(slog.NewTextHandler(io.Discard, nil)), &Stats{})
}

// addClient adds a connection-less client; it never starts a write pump,
// so the test reads its queue directly.
func addClient(t testing.TB, h *Hub, username string) *Client {
	t.Helper()
	if err := h.reserve(username); err != nil {
		t.Fatal(err)
	}
	c := newClient(h, upgraded{}, username, "test")
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
	c.close(disconnectShutdown)
	c.close(disconnectSlow) // only the first reason counts
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
	c.conn = &websocket.Conn{} // a stand-in: only startPumpLocked looks at it
	c.mu.Lock()
	if !c.startPumpLocked() {
		t.Fatal("an idle client refused to start its write pump")
	}
	if c.startPumpLocked() {
		t.Fatal("a second write pump could start beside the first")
	}
	c.mu.Unlock()
	if _, idle := c.takeWork(nil); !idle {
		t.Fatal("an empty client kept its pump")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.startPumpLocked() {
		t.Fatal("the pump's place was not given back when it went idle")
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
	b.cleanup() // what the write pump does when it ends
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
	if err := h.add(newClient(h, upgraded{}, "late", "test")); err != errHubClosed {
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
