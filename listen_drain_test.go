package main

import (
	"bufio"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestARequestOnAConnectionAcceptedBeforeShutdownIsAnswered: a connection
// the daemon accepted just before it began shutting down, whose request
// arrives a moment later, gets its answer instead of EOF (net/http's
// Shutdown alone drops it), while new connections are refused.
func TestARequestOnAConnectionAcceptedBeforeShutdownIsAnswered(t *testing.T) {
	t.Parallel()
	td := startDaemon(t, startRedis(t), nil)
	td.waitReady()
	addr := strings.TrimPrefix(td.baseURL, "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Accepted: the server has it before the shutdown begins.
	eventually(t, 5*time.Second, "the connection accepted", func() bool { return td.d.fresh.count() == 1 })
	stopped := make(chan error, 1)
	go func() { stopped <- td.stop() }()
	time.Sleep(100 * time.Millisecond) // the shutdown has begun
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Fatal("a new connection was accepted during the shutdown")
	}
	if _, err := conn.Write([]byte("GET /health HTTP/1.1\r\nHost: fanout\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("request on a connection accepted before the shutdown: %v, want an answer", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/health answered %d", resp.StatusCode)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}
