package e2e

import (
	"encoding/json"
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

// historySubprotocol is the WebSocket subprotocol of history-aware clients.
const historySubprotocol = "fanout.v1"

// get fetches url and returns its status and body.
func get(url string) (int, string, error) {
	resp, err := http.Get(url)
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

// histFrame is one message a history-aware client received: an event or a
// control.
type histFrame struct {
	// control is the control's name ("resync"); "" for an event.
	control string
	// hasID is false for an event sent without an id (HISTORY=off, or
	// recording it failed).
	hasID bool
	id    string
	// data is the event's payload; for a control, the control's JSON.
	data string
}

func (f histFrame) String() string {
	if f.control != "" {
		return "control " + f.data
	}
	if !f.hasID {
		return "event (no id) " + f.data
	}
	return "event " + f.id + " " + f.data
}

// parseHistoryMessage parses a fanout.v1 text frame: {"id":…,"data":…} or
// {"control":…}. data keeps the payload's bytes as sent.
func parseHistoryMessage(msg []byte) (histFrame, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(msg, &fields); err != nil {
		return histFrame{}, fmt.Errorf("fanout.v1 frame %q is not a JSON object: %w", msg, err)
	}
	if raw, ok := fields["control"]; ok {
		var name string
		if err := json.Unmarshal(raw, &name); err != nil || name == "" {
			return histFrame{}, fmt.Errorf("fanout.v1 control %q: control is not a name", msg)
		}
		return histFrame{control: name, data: string(msg)}, nil
	}
	data, ok := fields["data"]
	if !ok {
		return histFrame{}, fmt.Errorf("fanout.v1 frame %q has neither data nor control", msg)
	}
	f := histFrame{data: string(data)}
	if raw, ok := fields["id"]; ok {
		if err := json.Unmarshal(raw, &f.id); err != nil {
			return histFrame{}, fmt.Errorf("fanout.v1 frame %q: id is not a string", msg)
		}
		f.hasID = true
	}
	return f, nil
}
