package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// getEvents requests /events with query and header and returns the
// response (its body closed at cleanup).
func getEvents(t *testing.T, td *testDaemon, query string, header http.Header) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", td.baseURL+"/events?"+query, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// refusedLine reads a refusal's one-line body.
func refusedLine(t *testing.T, resp *http.Response) string {
	t.Helper()
	body, _ := io.ReadAll(resp.Body)
	line := strings.TrimSuffix(string(body), "\n")
	if line == "" || strings.Contains(line, "\n") {
		t.Fatalf("HTTP %d body %q, want one line", resp.StatusCode, body)
	}
	return line
}

func TestSSEFollowsTheSameRulesAsTheWebSocket(t *testing.T) {
	r := startRedis(t)
	td := startDaemon(t, r, jwtEnv(map[string]string{"ALLOWED_ORIGINS": "https://app.example.com"}))
	td.waitReady()
	for _, c := range []struct {
		name   string
		query  string
		header http.Header
		status int
	}{
		{"no token", "username=alice", nil, http.StatusUnauthorized},
		{"someone else's channel", "username=bob&token=" + hsToken(t, "alice"), nil, http.StatusForbidden},
		{"bad username", "username=a:b&token=" + hsToken(t, "alice"), nil, http.StatusBadRequest},
		{"bad history", "token=" + hsToken(t, "alice") + "&history=-1", nil, http.StatusBadRequest},
		{"foreign origin", "token=" + hsToken(t, "alice"), http.Header{"Origin": {"https://evil.example"}}, http.StatusForbidden},
	} {
		resp := getEvents(t, td, c.query, c.header)
		if resp.StatusCode != c.status {
			t.Errorf("%s: HTTP %d, want %d", c.name, resp.StatusCode, c.status)
		}
		t.Logf("%s: %d %s", c.name, resp.StatusCode, refusedLine(t, resp))
	}
	resp := getEvents(t, td, "token="+hsToken(t, "alice"), http.Header{"Origin": {"https://app.example.com"}})
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" {
		t.Fatalf("allowed origin: HTTP %d %v", resp.StatusCode, resp.Header)
	}
	eventually(t, 5*time.Second, "registered", func() bool { return td.d.hub.connectionCount("alice") == 1 })
	td.publish("alice", `{"n":1}`)
	if ev := readSSE(t, bufio.NewReader(resp.Body)); ev.data != `{"n":1}` {
		t.Fatalf("got %+v", ev)
	}
}

func TestSSEHeartbeatsKeepAnIdleStreamAlive(t *testing.T) {
	// Restored after the daemon has stopped (cleanups run last first).
	saved := sseHeartbeat
	t.Cleanup(func() { sseHeartbeat = saved })
	sseHeartbeat = 50 * time.Millisecond
	td := startDaemon(t, startRedis(t), nil)
	td.waitReady()
	resp := getEvents(t, td, "username=idle", nil)
	br := bufio.NewReader(resp.Body)
	beats := 0
	deadline := time.Now().Add(5 * time.Second)
	for beats < 3 && time.Now().Before(deadline) {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if line == ": heartbeat\n" {
			beats++
		}
	}
	if beats < 3 {
		t.Fatalf("%d heartbeats in 5s at a 50ms period", beats)
	}
}

func TestASlowSSEClientIsDisconnectedAndOthersKeepTheirEvents(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{"SEND_QUEUE_BYTES": "1024", "WRITE_WAIT": "500ms", "LOG_LEVEL": "info"})
	td.waitReady()
	// A client that never reads, with a small receive buffer.
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			_ = conn.(*net.TCPConn).SetReadBuffer(4 << 10)
		}
		return conn, err
	}}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest("GET", td.baseURL+"/events?username=stuck", nil)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	other := getEvents(t, td, "username=fine", nil)
	eventually(t, 5*time.Second, "registered", func() bool {
		return td.d.hub.connectionCount("stuck") == 1 && td.d.hub.connectionCount("fine") == 1
	})
	big := `{"blob":"` + strings.Repeat("x", 64<<10) + `"}`
	publishUntil(t, td, "stuck", big, 2000, func() bool { return td.d.stats.SlowDisconnects.Load() > 0 })
	eventually(t, 5*time.Second, "stuck stream ended", func() bool { return td.d.hub.connectionCount("stuck") == 0 })
	td.publish("fine", `{"ok":true}`)
	if ev := readSSE(t, bufio.NewReader(other.Body)); ev.data != `{"ok":true}` {
		t.Fatalf("other client got %+v", ev)
	}
}

func TestShutdownEndsSSEStreamsAtOnce(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{"SHUTDOWN_TIMEOUT": "10s"})
	td.waitReady()
	resp := getEvents(t, td, "username=leaving", nil)
	eventually(t, 5*time.Second, "registered", func() bool { return td.d.hub.connectionCount("leaving") == 1 })
	start := time.Now()
	if err := td.stop(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("shutdown took %v with an SSE stream open", took)
	}
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Fatalf("stream did not end cleanly: %v", err)
	}
}

// rawSSE is an SSE stream read on the test's goroutine from a raw socket,
// so that the test holds no goroutine per stream: the response's head is
// read by openRawSSE, the body through body (chunked or not, as the
// response says).
type rawSSE struct {
	conn   net.Conn
	header http.Header
	body   *bufio.Reader
	// closes is set when the response says Connection: close.
	closes bool
}

// openRawSSE opens /events?query over proto (HTTP/1.1 or HTTP/1.0) and reads
// the response's head; the stream is closed at cleanup.
func openRawSSE(t *testing.T, td *testDaemon, query, proto string) *rawSSE {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(td.baseURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := fmt.Fprintf(conn, "GET /events?%s %s\r\nHost: fanout\r\nAccept: text/event-stream\r\n\r\n", query, proto); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReaderSize(conn, 512)
	resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HTTP %d", resp.StatusCode)
	}
	_ = conn.SetReadDeadline(time.Time{})
	// http.ReadResponse's body decodes the chunks, and ends at the last one.
	return &rawSSE{conn: conn, header: resp.Header, body: bufio.NewReaderSize(resp.Body, 512), closes: resp.Close}
}

// next reads the stream's next event (comments and the retry line skipped)
// within 5 s.
func (s *rawSSE) next(t *testing.T) sseEvent {
	t.Helper()
	_ = s.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer s.conn.SetReadDeadline(time.Time{})
	return readSSE(t, s.body)
}

func TestAnIdleSSEStreamHoldsNoGoroutine(t *testing.T) {
	skipShort(t, "a footprint test of 1 000 streams; ./test.sh runs it with and without the race detector")
	// Restored after the daemon has stopped (cleanups run last first).
	saved := sseHeartbeat
	t.Cleanup(func() { sseHeartbeat = saved })
	sseHeartbeat = time.Second
	td := startDaemon(t, startRedis(t), map[string]string{"LOG_LEVEL": "warn", "PROBE_TIMEOUT": probeTimeoutUnderLoad})
	td.waitReady()
	// The daemon's own goroutines grow their stacks on the first event:
	// one goes through before the baseline.
	warm := openRawSSE(t, td, "username=warm-up", "HTTP/1.1")
	eventually(t, 5*time.Second, "warm-up registered", func() bool { return td.d.hub.connectionCount("warm-up") == 1 })
	td.publish("warm-up", `{"type":"x"}`)
	if ev := warm.next(t); ev.data != `{"type":"x"}` {
		t.Fatalf("got %+v", ev)
	}
	warm.conn.Close()
	eventually(t, 5*time.Second, "warm-up stream gone", func() bool { return td.d.hub.connections.Load() == 0 })
	g0, s0 := goroutinesAndStack()
	const n = 1000
	streams := make([]*rawSSE, n)
	for i := range streams {
		streams[i] = openRawSSE(t, td, fmt.Sprintf("username=user%d", i), "HTTP/1.1")
	}
	eventually(t, 5*time.Second, "all registered", func() bool { return td.d.hub.connections.Load() == n })
	// An event to each, then heartbeats: each stream has been written by
	// broadcast and by write sides the pinger started.
	for i := range n {
		td.publish(fmt.Sprintf("user%d", i), `{"type":"x"}`)
	}
	for _, s := range streams {
		if ev := s.next(t); ev.data != `{"type":"x"}` {
			t.Fatalf("got %+v", ev)
		}
	}
	time.Sleep(sseHeartbeat + sseHeartbeat/2)
	// Read the heartbeats, so that no stream's socket is backed up.
	for _, s := range streams {
		_ = s.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if line, err := s.body.ReadString('\n'); err != nil || line != ": heartbeat\n" {
			t.Fatalf("read %q, %v; want a heartbeat", line, err)
		}
	}
	checkIdleCost(t, n, g0, s0, "the stream is taken over from net/http; its read side parks; no write side while idle")
}

func TestAnSSEClientThatGoesAwayIsNoticedAtOnce(t *testing.T) {
	td := startDaemon(t, startRedis(t), nil)
	td.waitReady()
	for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
		s := openRawSSE(t, td, "username=leaving", proto)
		eventually(t, 5*time.Second, "registered", func() bool { return td.d.hub.connectionCount("leaving") == 1 })
		// Heartbeats are 15 s apart: only the read side can notice.
		start := time.Now()
		s.conn.Close()
		eventually(t, 2*time.Second, proto+" stream unregistered", func() bool { return td.d.hub.connectionCount("leaving") == 0 })
		t.Logf("%s: unregistered %v after the client closed", proto, time.Since(start).Round(time.Millisecond))
	}
	// A client that sends bytes on its stream (nothing should) is ignored
	// up to the limit of a client message, and cut off past it.
	s := openRawSSE(t, td, "username=chatty", "HTTP/1.1")
	eventually(t, 5*time.Second, "registered", func() bool { return td.d.hub.connectionCount("chatty") == 1 })
	if _, err := s.conn.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	td.publish("chatty", `{"n":1}`)
	if ev := s.next(t); ev.data != `{"n":1}` {
		t.Fatalf("got %+v", ev)
	}
	if _, err := s.conn.Write(bytes.Repeat([]byte("x"), maxClientMessageSize)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "chatty stream cut off", func() bool { return td.d.hub.connectionCount("chatty") == 0 })
}

func TestAnSSEResponseKeepsItsFramingToTheEnd(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{"SHUTDOWN_TIMEOUT": "10s"})
	td.waitReady()
	chunked := openRawSSE(t, td, "username=framed", "HTTP/1.1")
	bare := openRawSSE(t, td, "username=framed", "HTTP/1.0")
	eventually(t, 5*time.Second, "registered", func() bool { return td.d.hub.connectionCount("framed") == 2 })
	if !chunked.closes {
		t.Error("no Connection: close; the stream is the connection's last response")
	}
	for name, want := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"} {
		if got := chunked.header.Get(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	// A payload with line breaks is several data lines, and one chunk
	// carries one whole event.
	td.publish("framed", "{\"a\":1,\r\n\"b\":2}")
	for name, s := range map[string]*rawSSE{"HTTP/1.1": chunked, "HTTP/1.0": bare} {
		ev := s.next(t)
		if ev.id == "" || ev.data != "{\"a\":1,\n\"b\":2}" {
			t.Fatalf("%s: got %+v", name, ev)
		}
	}
	if err := td.stop(); err != nil {
		t.Fatal(err)
	}
	// The chunked body ends with its last chunk (a missing one is
	// io.ErrUnexpectedEOF), the bare one with the connection's end.
	for name, s := range map[string]*rawSSE{"HTTP/1.1": chunked, "HTTP/1.0": bare} {
		_ = s.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if rest, err := io.ReadAll(s.body); err != nil {
			t.Errorf("%s: stream ended with %v after %q", name, err, rest)
		}
	}
}

// TestAbortingAStreamBeforeItIsTakenOverIsSafe: shutdown may give up on a
// stream whose handler is still writing the retry line (abort before the
// connection is taken over from net/http).
func TestAbortingAStreamBeforeItIsTakenOverIsSafe(t *testing.T) {
	c := &sseClient{rc: http.NewResponseController(httptest.NewRecorder())}
	c.abort() // no stream yet: sets the response's write deadline, and must not panic
}
