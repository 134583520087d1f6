package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"fanout/history"
)

// v1Frame is a fanout.v1 frame: an event or a control.
type v1Frame struct {
	ID      string          `json:"id"`
	Data    json.RawMessage `json:"data"`
	Control string          `json:"control"`
	Reason  string          `json:"reason"`
}

// dialV1 opens a fanout.v1 WebSocket on url (query included) and checks
// that the daemon chose the subprotocol.
func dialV1(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{subprotocolV1}}
	conn, resp, err := d.Dial(url, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (HTTP %d)", url, err, status)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if conn.Subprotocol() != subprotocolV1 {
		t.Fatalf("subprotocol %q, want %q", conn.Subprotocol(), subprotocolV1)
	}
	return conn
}

func readV1(t *testing.T, conn *websocket.Conn) v1Frame {
	t.Helper()
	var f v1Frame
	if err := json.Unmarshal([]byte(readText(t, conn, 5*time.Second)), &f); err != nil {
		t.Fatalf("frame is not JSON: %v", err)
	}
	return f
}

func TestV1ClientsGetIDsAndPlainClientsTheBytes(t *testing.T) {
	r := startRedis(t)
	td := startDaemon(t, r, nil)
	td.waitReady()
	plain := td.dial("alice")
	v1 := dialV1(t, td.wsURL+"?username=alice")
	eventually(t, 5*time.Second, "both registered", func() bool { return td.d.hub.connectionCount("alice") == 2 })
	payload := `{"type":"node_completed", "n": 1}`
	td.publish("alice", payload)
	if got := readText(t, plain, 5*time.Second); got != payload {
		t.Fatalf("plain client got %q", got)
	}
	f := readV1(t, v1)
	if string(f.Data) != payload || f.ID == "" {
		t.Fatalf("v1 client got %+v", f)
	}
	evs, err := history.After(context.Background(), td.pub, "alice", "", 10)
	if err != nil || len(evs) != 1 || evs[0].ID != f.ID || evs[0].Data != payload {
		t.Fatalf("history holds %+v (%v), want the event with id %s", evs, err, f.ID)
	}
}

func TestResumeOverWebSocketSendsTheMissedEventsThenLiveOnes(t *testing.T) {
	r := startRedis(t)
	td := startDaemon(t, r, nil)
	td.waitReady()
	conn := dialV1(t, td.wsURL+"?username=bob")
	eventually(t, 5*time.Second, "registered", func() bool { return td.d.hub.connectionCount("bob") == 1 })
	td.publish("bob", `{"n":0}`)
	last := readV1(t, conn).ID
	conn.Close()
	eventually(t, 5*time.Second, "gone", func() bool { return td.d.hub.connectionCount("bob") == 0 })
	for i := 1; i <= 5; i++ {
		td.publish("bob", fmt.Sprintf(`{"n":%d}`, i))
	}
	eventually(t, 5*time.Second, "recorded", func() bool { return td.d.stats.HistoryRecorded.Load() == 6 })
	conn = dialV1(t, td.wsURL+"?username=bob&last_event_id="+last)
	for i := 1; i <= 5; i++ {
		if f := readV1(t, conn); string(f.Data) != fmt.Sprintf(`{"n":%d}`, i) {
			t.Fatalf("replayed %d: %+v", i, f)
		}
	}
	td.publish("bob", `{"n":6}`)
	if f := readV1(t, conn); string(f.Data) != `{"n":6}` {
		t.Fatalf("live: %+v", f)
	}

	// An id the history does not hold: resync, then what is retained.
	conn = dialV1(t, td.wsURL+"?username=bob&last_event_id=nonsense")
	if f := readV1(t, conn); f.Control != "resync" {
		t.Fatalf("want resync first, got %+v", f)
	}
	for i := 0; i <= 6; i++ {
		if f := readV1(t, conn); string(f.Data) != fmt.Sprintf(`{"n":%d}`, i) {
			t.Fatalf("after resync %d: %+v", i, f)
		}
	}
	// A late joiner asks for the last 2.
	conn = dialV1(t, td.wsURL+"?username=bob&history=2")
	for i := 5; i <= 6; i++ {
		if f := readV1(t, conn); string(f.Data) != fmt.Sprintf(`{"n":%d}`, i) {
			t.Fatalf("history=2, event %d: %+v", i, f)
		}
	}
	if h := tryDial(t, td.wsURL+"?username=bob&history=lots", nil); h.status != http.StatusBadRequest {
		t.Fatalf("history=lots: HTTP %d %q", h.status, h.line)
	}
}

// sseEvent is one event read from a text/event-stream.
type sseEvent struct{ id, event, data string }

// readSSE reads the next event (skipping comments and retry lines).
func readSSE(t *testing.T, br *bufio.Reader) sseEvent {
	t.Helper()
	var ev sseEvent
	var data []string
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("read event stream: %v", err)
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if data != nil || ev.event != "" {
				ev.data = strings.Join(data, "\n")
				return ev
			}
		case strings.HasPrefix(line, ":"), strings.HasPrefix(line, "retry:"):
		case strings.HasPrefix(line, "id: "):
			ev.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			ev.event = line[7:]
		case strings.HasPrefix(line, "data: "):
			data = append(data, line[6:])
		default:
			t.Fatalf("unexpected line %q", line)
		}
	}
}

func TestSSEStreamsEventsWithIDsAndResumesFromLastEventID(t *testing.T) {
	r := startRedis(t)
	td := startDaemon(t, r, nil)
	td.waitReady()
	open := func(header string) (*http.Response, *bufio.Reader) {
		req, _ := http.NewRequest("GET", td.baseURL+"/events?username=carol", nil)
		if header != "" {
			req.Header.Set("Last-Event-ID", header)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" || resp.Header.Get("X-Accel-Buffering") != "no" {
			t.Fatalf("HTTP %d %v", resp.StatusCode, resp.Header)
		}
		return resp, bufio.NewReader(resp.Body)
	}
	resp, br := open("")
	eventually(t, 5*time.Second, "registered", func() bool { return td.d.hub.connectionCount("carol") == 1 })
	td.publish("carol", "{\"a\":1,\n\"b\":2}")
	ev := readSSE(t, br)
	if ev.id == "" || ev.data != "{\"a\":1,\n\"b\":2}" {
		t.Fatalf("got %+v", ev)
	}
	resp.Body.Close()
	eventually(t, 5*time.Second, "gone", func() bool { return td.d.hub.connectionCount("carol") == 0 })
	td.publish("carol", `{"n":2}`)
	td.publish("carol", `{"n":3}`)
	eventually(t, 5*time.Second, "recorded", func() bool { return td.d.stats.HistoryRecorded.Load() == 3 })
	_, br = open(ev.id)
	for _, want := range []string{`{"n":2}`, `{"n":3}`} {
		if got := readSSE(t, br); got.data != want || got.id == "" {
			t.Fatalf("resumed: %+v, want %s", got, want)
		}
	}
	_, br = open("1-0")
	if got := readSSE(t, br); got.event != "resync" {
		t.Fatalf("want resync, got %+v", got)
	}
}
