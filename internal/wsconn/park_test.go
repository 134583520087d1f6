//go:build linux

package wsconn

import (
	"errors"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// parked parks server's read side with a resume that signals the returned
// channel, and fails unless it parked.
func parked(t *testing.T, server *Conn) <-chan struct{} {
	t.Helper()
	resumed := make(chan struct{}, 1)
	server.SetResume(func() { resumed <- struct{}{} })
	if !server.Park() {
		t.Fatal("Park = false, want the read side parked")
	}
	return resumed
}

// waitResumed fails unless resumed is signalled within a second.
func waitResumed(t *testing.T, resumed <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-resumed:
	case <-time.After(time.Second):
		t.Fatalf("the parked read side was not resumed %s", what)
	}
}

func TestParkedConnectionsHoldNoGoroutineAndResumeWhenTheClientSends(t *testing.T) {
	const n = 50
	servers, clients := make([]*Conn, n), make([]*websocket.Conn, n)
	for i := range n {
		servers[i], clients[i] = upgradedConn(t)
		_ = servers[i].SetReadDeadline(time.Now().Add(time.Minute))
	}
	before := runtime.NumGoroutine()
	resumed := make([]<-chan struct{}, n)
	for i, s := range servers {
		resumed[i] = parked(t, s)
	}
	// The parking lot's one goroutine, whatever the number parked.
	if after := runtime.NumGoroutine(); after > before+1 {
		t.Errorf("%d goroutines after parking %d read sides, want at most %d", after, n, before+1)
	}
	for i, c := range clients {
		if err := c.WriteControl(websocket.PongMessage, []byte("p"), time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		waitResumed(t, resumed[i], "when its client sent a pong")
		if err := servers[i].AwaitReadable(); err != nil {
			t.Fatal(err)
		}
		if op, payload, err := servers[i].NextControl(); err != nil || op != websocket.PongMessage || string(payload) != "p" {
			t.Fatalf("NextControl = %d %q %v, want the pong", op, payload, err)
		}
	}
	// Nothing left to read: it parks again, and is woken only by more.
	again := parked(t, servers[0])
	select {
	case <-again:
		t.Fatal("resumed with nothing to read")
	case <-time.After(2 * sweepEvery):
	}
}

func TestClosingAParkedConnectionResumesItsReadSide(t *testing.T) {
	server, _ := upgradedConn(t)
	resumed := parked(t, server)
	_ = server.Close()
	waitResumed(t, resumed, "when its socket was closed")
	if err := server.AwaitReadable(); err == nil {
		t.Fatal("AwaitReadable on a closed socket: nil error")
	}
	if server.Park() {
		t.Fatal("a closed connection parked")
	}
}

func TestAParkedReadSideIsResumedWhenItsReadDeadlinePasses(t *testing.T) {
	server, _ := upgradedConn(t)
	_ = server.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	resumed := parked(t, server)
	waitResumed(t, resumed, "when its read deadline passed")
	if err := server.AwaitReadable(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("AwaitReadable = %v, want the deadline's error", err)
	}
}
