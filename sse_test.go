package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
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
	defer func(d time.Duration) { sseHeartbeat = d }(sseHeartbeat)
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
