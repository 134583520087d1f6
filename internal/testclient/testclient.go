// Package testclient is the history-aware test client of the daemon's
// contract: a fanout.v1 WebSocket or an SSE stream, read frame by frame, as
// the root package's tests and the whole-process tests (e2e) use it.
package testclient

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Subprotocol is the daemon's history-aware WebSocket subprotocol.
const Subprotocol = "fanout.v1"

// Frame is one message a history-aware client received: an event or a
// control.
type Frame struct {
	// Control is the control's name ("resync"); "" for an event.
	Control string
	// HasID is false for an event sent without an id (HISTORY=off).
	HasID bool
	ID    string
	// Data is the event's payload; for a control, the control's JSON.
	Data string
}

func (f Frame) String() string {
	if f.Control != "" {
		return "control " + f.Data
	}
	if !f.HasID {
		return "event (no id) " + f.Data
	}
	return "event " + f.ID + " " + f.Data
}

// Stream is one open connection of a history-aware client.
type Stream interface {
	// Next returns the next frame; it fails once the stream has ended or
	// has been closed.
	Next() (Frame, error)
	// NextWithin is Next, failing (and ending the stream) after d.
	NextWithin(d time.Duration) (Frame, error)
	// Close ends the stream; it may be called from another goroutine than
	// the reader's, and more than once.
	Close()
}

// Transport opens history-aware connections to an instance.
type Transport struct {
	Name string
	// Dial opens a stream at baseURL ("http://host:port") with query;
	// lastEventID, when set, is sent as the Last-Event-ID header.
	Dial func(ctx context.Context, client *http.Client, baseURL string, query url.Values, lastEventID string) (Stream, error)
	// HeaderResume tells whether the transport can resume with the
	// Last-Event-ID header (EventSource's own reconnects).
	HeaderResume bool
}

// Transports are WebSocket with fanout.v1 and SSE.
func Transports() []Transport {
	return []Transport{
		{Name: "websocket", Dial: DialWS},
		{Name: "sse", Dial: DialSSE, HeaderResume: true},
	}
}

// ResumeQuery is the query (and Last-Event-ID header) of a connection for
// user resuming after lastID ("": none). SSE connections alternate between
// the header and the query parameter.
func ResumeQuery(tr Transport, user, lastID string, attempt int) (url.Values, string) {
	q := url.Values{"username": {user}}
	if lastID == "" {
		return q, ""
	}
	if tr.HeaderResume && attempt%2 == 0 {
		return q, lastID
	}
	q.Set("last_event_id", lastID)
	return q, ""
}

// NewSSEClient returns an HTTP client for SSE streams that keeps no idle
// connection past the test.
func NewSSEClient(t testing.TB) *http.Client {
	tr := &http.Transport{DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// wsHistStream is a WebSocket offering fanout.v1.
type wsHistStream struct{ conn *websocket.Conn }

// DialWS opens /ws offering fanout.v1, which the daemon must accept.
func DialWS(ctx context.Context, _ *http.Client, baseURL string, query url.Values, lastEventID string) (Stream, error) {
	dialer := websocket.Dialer{Subprotocols: []string{Subprotocol}, HandshakeTimeout: 5 * time.Second}
	var header http.Header
	if lastEventID != "" {
		header = http.Header{"Last-Event-ID": {lastEventID}}
	}
	u := "ws" + strings.TrimPrefix(baseURL, "http") + "/ws?" + query.Encode()
	conn, resp, err := dialer.DialContext(ctx, u, header)
	if err != nil {
		if resp != nil {
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			return nil, fmt.Errorf("dial %s: HTTP %d %q: %w", u, resp.StatusCode, strings.TrimSpace(string(body)), err)
		}
		return nil, fmt.Errorf("dial %s: %w", u, err)
	}
	if got := conn.Subprotocol(); got != Subprotocol {
		_ = conn.Close()
		return nil, fmt.Errorf("dial %s: subprotocol %q, want %q", u, got, Subprotocol)
	}
	return &wsHistStream{conn: conn}, nil
}

func (s *wsHistStream) Next() (Frame, error) {
	typ, data, err := s.conn.ReadMessage()
	if err != nil {
		return Frame{}, err
	}
	if typ != websocket.TextMessage {
		return Frame{}, fmt.Errorf("frame type %d, want text", typ)
	}
	return ParseV1(data)
}

func (s *wsHistStream) NextWithin(d time.Duration) (Frame, error) {
	_ = s.conn.SetReadDeadline(time.Now().Add(d))
	defer func() { _ = s.conn.SetReadDeadline(time.Time{}) }()
	return s.Next()
}

func (s *wsHistStream) Close() { _ = s.conn.Close() }

// ParseV1 parses a fanout.v1 text frame: {"id":…,"data":…} or
// {"control":…}. data keeps the payload's bytes as sent.
func ParseV1(msg []byte) (Frame, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(msg, &fields); err != nil {
		return Frame{}, fmt.Errorf("fanout.v1 frame %q is not a JSON object: %w", msg, err)
	}
	if raw, ok := fields["control"]; ok {
		var name string
		if err := json.Unmarshal(raw, &name); err != nil || name == "" {
			return Frame{}, fmt.Errorf("fanout.v1 control %q: control is not a name", msg)
		}
		return Frame{Control: name, Data: string(msg)}, nil
	}
	data, ok := fields["data"]
	if !ok {
		return Frame{}, fmt.Errorf("fanout.v1 frame %q has neither data nor control", msg)
	}
	f := Frame{Data: string(data)}
	if raw, ok := fields["id"]; ok {
		if err := json.Unmarshal(raw, &f.ID); err != nil {
			return Frame{}, fmt.Errorf("fanout.v1 frame %q: id is not a string", msg)
		}
		f.HasID = true
	}
	return f, nil
}

// sseHistStream is a GET /events response read as EventSource reads it.
type sseHistStream struct {
	body   io.ReadCloser
	lines  *bufio.Reader
	cancel context.CancelFunc
}

// DialSSE opens /events and checks the response headers. The daemon must
// send them at once, before any event (EventSource's open).
func DialSSE(ctx context.Context, client *http.Client, baseURL string, query url.Values, lastEventID string) (Stream, error) {
	ctx, cancel := context.WithCancel(ctx)
	u := baseURL + "/events?" + query.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	if lastEventID != "" {
		req.Header.Set("Last-Event-ID", lastEventID)
	}
	headersLate := time.AfterFunc(5*time.Second, cancel)
	resp, err := client.Do(req)
	if !headersLate.Stop() {
		if err == nil {
			_ = resp.Body.Close()
		}
		return nil, fmt.Errorf("GET %s: no response headers within 5s", u)
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	fail := func(format string, args ...any) (Stream, error) {
		cancel()
		_ = resp.Body.Close()
		return nil, fmt.Errorf("GET %s: "+format, append([]any{u}, args...)...)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fail("HTTP %d %q", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		return fail("Content-Type %q, want text/event-stream", ct)
	}
	// nginx acts on X-Accel-Buffering and does not pass it on.
	if got := resp.Header.Get("X-Accel-Buffering"); got != "no" && !strings.HasPrefix(resp.Header.Get("Server"), "nginx") {
		return fail("X-Accel-Buffering %q, want no", got)
	}
	return &sseHistStream{body: resp.Body, lines: bufio.NewReader(resp.Body), cancel: cancel}, nil
}

// Next reads up to the next dispatched event, as EventSource does: a
// partial event cut by the end of the stream is dropped, comments
// (heartbeats) are skipped, data lines are joined with "\n".
func (s *sseHistStream) Next() (Frame, error) {
	var (
		f       Frame
		event   string
		data    []string
		hasData bool
	)
	for {
		line, err := s.lines.ReadString('\n')
		if err != nil {
			return Frame{}, err
		}
		line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		if line == "" {
			if !hasData {
				f, event = Frame{}, ""
				continue
			}
			f.Data = strings.Join(data, "\n")
			switch event {
			case "", "message":
			case "resync":
				f.Control = event
				var c struct{ Control string }
				if err := json.Unmarshal([]byte(f.Data), &c); err != nil || c.Control != "resync" {
					return Frame{}, fmt.Errorf("SSE resync event with data %q, want {\"control\":\"resync\",…}", f.Data)
				}
			default:
				return Frame{}, fmt.Errorf("SSE event %q (data %q): no such event in the contract", event, f.Data)
			}
			return f, nil
		}
		if strings.HasPrefix(line, ":") {
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "id":
			f.ID, f.HasID = value, true
		case "data":
			data, hasData = append(data, value), true
		case "event":
			event = value
		}
	}
}

func (s *sseHistStream) NextWithin(d time.Duration) (Frame, error) {
	late := time.AfterFunc(d, s.cancel)
	defer late.Stop()
	return s.Next()
}

func (s *sseHistStream) Close() {
	s.cancel()
	_ = s.body.Close()
}
