package e2e

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// The client side of the tests: what a browser or a script does with the
// daemon's HTTP, WebSocket and fanout.v1 protocol.

// get fetches url and returns its status and body.
func get(url string) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	return do(req)
}

// do sends req and returns the response's status and body.
func do(req *http.Request) (int, string, error) {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// dialWS opens a WebSocket and closes it at cleanup.
func dialWS(t testing.TB, url string, header http.Header) *websocket.Conn {
	t.Helper()
	conn, resp, err := websocket.DefaultDialer.Dial(url, header)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (HTTP %d)", url, err, status)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// readText reads the next frame, which must be a text frame, within d.
func readText(t testing.TB, conn *websocket.Conn, d time.Duration) string {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(d))
	typ, data, err := conn.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if typ != websocket.TextMessage {
		t.Fatalf("frame type %d, want text", typ)
	}
	return string(data)
}

// readUntilError reads frames until the connection fails and returns why.
func readUntilError(conn *websocket.Conn) error {
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, _, err := conn.ReadMessage(); err != nil {
			var netErr interface{ Timeout() bool }
			if errors.As(err, &netErr) && netErr.Timeout() {
				return fmt.Errorf("no close within 10s: %w", err)
			}
			return err
		}
	}
}

// countLines counts the lines of logs that contain s.
func countLines(logs, s string) int {
	n := 0
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}
