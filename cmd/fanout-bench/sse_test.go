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
	"net/http/httputil"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestSSEURL(t *testing.T) {
	for in, want := range map[string]string{
		"ws://127.0.0.1:8084/ws":     "http://127.0.0.1:8084/events",
		"ws://127.0.0.1:8084/ws/":    "http://127.0.0.1:8084/events",
		"ws://127.0.0.1:8084":        "http://127.0.0.1:8084/events",
		"ws://h:1/fanout/ws":         "http://h:1/fanout/events",
		"ws://h:1/ws?x=1":            "http://h:1/events",
		"http://127.0.0.1:8084/sse":  "http://127.0.0.1:8084/sse",
		"http://127.0.0.1:8084":      "http://127.0.0.1:8084/events",
		"http://localhost/events":    "http://localhost/events",
		"ws://[::1]:8084/ws":         "http://[::1]:8084/events",
		"ws://127.0.0.1:8084/ws#top": "http://127.0.0.1:8084/events",
	} {
		got, err := sseURL(in)
		if err != nil || got != want {
			t.Errorf("sseURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"wss://h/ws", "https://h/events", "ws:///ws", "127.0.0.1:8084"} {
		if got, err := sseURL(in); err == nil {
			t.Errorf("sseURL(%q) = %q, want an error", in, got)
		}
	}
	tg, err := parseSSETarget("http://localhost/events")
	if err != nil || tg != (sseTarget{addr: "localhost:80", host: "localhost", path: "/events"}) {
		t.Errorf("parseSSETarget: %+v %v", tg, err)
	}
}

func TestTransportCheck(t *testing.T) {
	base := options{url: "ws://127.0.0.1:8084/ws", users: 1, connsPerUser: 1, thenRate: 10, inflight: 1,
		sources: 1, dialWorkers: 1, publishers: 1, timeout: time.Second, stormMissed: 1, stormDialWorkers: 1, transport: transportSSE}
	if o := base; o.check() != nil {
		t.Errorf("sse: %v", o.check())
	}
	for name, mod := range map[string]func(*options){
		"storm":       func(o *options) { o.stormClients, o.rate = 10, 10 },
		"subprotocol": func(o *options) { o.subprotocol = "fanout.v1" },
		"transport":   func(o *options) { o.transport = "quic" },
		"wss":         func(o *options) { o.url = "wss://h/ws" },
	} {
		o := base
		mod(&o)
		if err := o.check(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// sseBody is a stream as the daemon writes it, and a few things it does
// not write that EventSource accepts.
const sseBody = "retry: 2000\n\n" +
	": heartbeat\n\n" +
	"id: 1700000000000-0\ndata: {\"a\":1}\n\n" +
	"data: line one\ndata: line two\ndata:no space\n\n" + // several data lines, no id
	"event: resync\ndata: {\"control\":\"resync\",\"reason\":\"trimmed\"}\n\n" +
	"id: 1700000000000-1\r\ndata: crlf\r\n\r\n" +
	": another comment\n" +
	"retry: 100\nunknown: field\ndata\n\n" + // a field without a colon: empty data
	"id: 1700000000000-2\n\n" + // an id alone dispatches nothing
	"data: incomplete\n" // no empty line: dropped at the end

type sseGot struct {
	Kind  sseKind
	ID    string
	HasID bool
	Event string
	Data  string
}

func parseAll(t *testing.T, p *sseStream) []sseGot {
	t.Helper()
	var got []sseGot
	for {
		kind, err := p.next()
		if err == io.EOF {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		if kind == sseComment {
			got = append(got, sseGot{Kind: sseComment})
			continue
		}
		got = append(got, sseGot{Kind: sseEvent, ID: string(p.eventID()), HasID: p.eventID() != nil, Event: string(p.event), Data: string(p.data)})
	}
}

// chunkEncode encodes body in chunks of n bytes (so lines straddle chunks),
// with the terminating chunk.
func chunkEncode(body string, n int) []byte {
	var b bytes.Buffer
	w := httputil.NewChunkedWriter(&b)
	for i := 0; i < len(body); i += n {
		w.Write([]byte(body[i:min(i+n, len(body))]))
	}
	w.Close()
	b.WriteString("\r\n")
	return b.Bytes()
}

func TestSSEStreamParse(t *testing.T) {
	long := strings.Repeat("x", 3*sseBufSize)
	body := sseBody[:len(sseBody)-len("data: incomplete\n")] + "data: " + long + "\n\n" + "data: incomplete\n"
	want := []sseGot{
		{Kind: sseComment},
		{Kind: sseEvent, ID: "1700000000000-0", HasID: true, Data: `{"a":1}`},
		{Kind: sseEvent, Data: "line one\nline two\nno space"},
		{Kind: sseEvent, Event: "resync", Data: `{"control":"resync","reason":"trimmed"}`},
		{Kind: sseEvent, ID: "1700000000000-1", HasID: true, Data: "crlf"},
		{Kind: sseComment},
		{Kind: sseEvent, Data: ""},
		{Kind: sseEvent, Data: long},
	}
	for name, in := range map[string][]byte{
		"plain":      []byte(body),
		"chunked 7":  chunkEncode(body, 7),
		"chunked 1":  chunkEncode(body, 1),
		"chunked 4k": chunkEncode(body, 4096),
	} {
		br := bufio.NewReaderSize(bytes.NewReader(in), sseBufSize)
		got := parseAll(t, newSSEStream(br, strings.HasPrefix(name, "chunked")))
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %+v\nwant %+v", name, got, want)
		}
	}
}

func TestSSEHeaders(t *testing.T) {
	for _, tc := range []struct {
		resp    string
		chunked bool
		err     string
	}{
		{"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n", true, ""},
		{"HTTP/1.1 200 OK\r\ncontent-type: Text/Event-Stream; charset=utf-8\r\nCache-Control: no-cache\r\n\r\n", false, ""},
		{"HTTP/1.0 200 OK\nContent-Type: text/event-stream\n\n", false, ""},
		{"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\nshutting down", false, "status 503 Service Unavailable"},
		{"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", false, "Content-Type"},
		{"HTTP/1.1 200 OK\r\n\r\n", false, "Content-Type"},
		{"SSH-2.0-OpenSSH\r\n", false, "bad status line"},
		{"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n", false, "EOF"},
		{"HTTP/1.1 200 OK\r\nX-Long: " + strings.Repeat("y", 600) + "\r\n\r\n", false, "too long"},
	} {
		got, err := readSSEHeaders(bufio.NewReaderSize(strings.NewReader(tc.resp), sseBufSize))
		if tc.err == "" && (err != nil || got != tc.chunked) {
			t.Errorf("%q: chunked %v, %v; want %v", tc.resp, got, err, tc.chunked)
		}
		if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%q: error %v, want one with %q", tc.resp, err, tc.err)
		}
	}
}

// sseFrames is what the test servers send on u7's stream: the bookkeeping
// of TestReaderAccounting and TestReaderFanoutV1 over SSE.
func sseFrames(now int64) string {
	ev := func(id string, user string, seq int64, ph int) string {
		s := ""
		if id != "" {
			s = "id: " + id + "\n"
		}
		return s + "data: " + string(appendEvent(nil, user, seq, now, ph, 256)) + "\n\n"
	}
	return "retry: 2000\n\n" +
		": heartbeat\n\n" +
		ev("1700000000000-0", "u7", 1, 1) +
		ev("1700000000000-1", "u7", 1, 1) + // duplicate
		"event: resync\ndata: {\"control\":\"resync\"}\n\n" +
		ev("1700000000000-2", "u7", 3, 1) +
		ev("1700000000000-2", "u7", 2, 1) + // out of order, and its id not above the previous one
		ev("1700000000000-3", "u8", 4, 1) + // a leak
		"data: {\"type\":\"other\"}\n\n" + // unparsable
		": heartbeat\n\n" +
		ev("1700000000001-0", "u7", 4, 2) +
		ev("", "u7", 5, 2) // no id (history off)
}

func checkSSEAccounting(t *testing.T, s *childState, c *benchConn, disconnects int64) {
	t.Helper()
	got := map[string]int64{"delivered": s.delivered.Load(), "dups": s.dups.Load(), "ooo": s.ooo.Load(),
		"leaks": s.leaks.Load(), "parse": s.parseErrs.Load(), "disconnects": s.disconnects.Load(),
		"controls": s.controls.Load(), "with_id": s.withID.Load(), "id_regress": s.idRegress.Load(),
		"heartbeats": s.heartbeats.Load(), "beat_streams": s.beatStreams.Load()}
	want := map[string]int64{"delivered": 5, "dups": 1, "ooo": 1, "leaks": 1, "parse": 1, "disconnects": disconnects,
		"controls": 1, "with_id": 4, "id_regress": 1, "heartbeats": 2, "beat_streams": 1}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %v\nwant %v", got, want)
	}
	var h [2]uint64
	for i := range s.hists {
		h[0] += s.hists[i][0].total
		h[1] += s.hists[i][1].total
	}
	if h != [2]uint64{3, 2} {
		t.Errorf("latency observations per phase %v", h)
	}
	if c.lastID != "1700000000001-0" || len(s.ctlText) != 1 || !strings.HasPrefix(s.ctlText[0], "event: resync data: {") {
		t.Errorf("last id %q, controls kept %q", c.lastID, s.ctlText)
	}
}

// TestSSEReaderChunked reads a stream from net/http's server (chunked, as
// the daemon's) with the raw client.
func TestSSEReaderChunked(t *testing.T) {
	now := time.Now().UnixNano()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/events" || r.URL.Query().Get("username") != "u7" || r.Header.Get("Accept") != "text/event-stream" {
			http.Error(w, "bad request "+r.URL.String(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		// Flushed piece by piece, so the body is several chunks.
		for _, part := range strings.SplitAfter(sseFrames(now), "\n\n") {
			io.WriteString(w, part)
			w.(http.Flusher).Flush()
		}
	}))
	defer srv.Close()
	u, err := sseURL("ws" + strings.TrimPrefix(srv.URL, "http") + "/ws")
	if err != nil {
		t.Fatal(err)
	}
	tg, err := parseSSETarget(u)
	if err != nil {
		t.Fatal(err)
	}
	conn, st, err := dialSSE(context.Background(), &net.Dialer{}, tg, "?username=u7")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second)) // the server keeps the connection open
	if !st.chunked {
		t.Error("the body is not read through the chunked reader")
	}
	s := &childState{out: bufio.NewWriter(nil)}
	c := &benchConn{conn: conn, sse: st, user: "u7", done: make(chan struct{})}
	s.stopping.Store(true) // the end of the response is not a disconnect
	s.readSSE(c, 0)
	checkSSEAccounting(t, s, c, 0)

	// A refused stream is a failed dial.
	tg.path = "/nope"
	if _, _, err := dialSSE(context.Background(), &net.Dialer{}, tg, "?username=u7"); err == nil || !strings.Contains(err.Error(), "status 400") {
		t.Errorf("refused stream: %v", err)
	}
}

// rawServer answers each connection with resp once it has read the
// request's headers, then closes it after linger.
func rawServer(t *testing.T, resp string, linger time.Duration) sseTarget {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil || line == "\r\n" {
						break
					}
				}
				io.WriteString(c, resp)
				time.Sleep(linger)
			}()
		}
	}()
	return sseTarget{addr: ln.Addr().String(), host: ln.Addr().String(), path: "/events"}
}

// TestSSEReaderPlain reads a body that is not chunked (the socket's own
// bufio.Reader gives the lines), which ends with the connection: a
// disconnect unless the child is stopping.
func TestSSEReaderPlain(t *testing.T) {
	now := time.Now().UnixNano()
	tg := rawServer(t, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"+sseFrames(now), 0)
	conn, st, err := dialSSE(context.Background(), &net.Dialer{}, tg, "?username=u7")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	s := &childState{out: bufio.NewWriter(nil)}
	c := &benchConn{conn: conn, sse: st, user: "u7", done: make(chan struct{})}
	s.readSSE(c, 0)
	if st.chunked {
		t.Error("a plain body read through the chunked reader")
	}
	checkSSEAccounting(t, s, c, 1) // the daemon ended the stream while the child ran

	for resp, want := range map[string]string{
		"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n":         "status 404",
		"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{}": "Content-Type",
	} {
		if _, _, err := dialSSE(context.Background(), &net.Dialer{}, rawServer(t, resp, 0), "?username=u7"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error with %q", resp, err, want)
		}
	}
	// A server that never answers: the context's deadline ends the dial.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	if _, _, err := dialSSE(ctx, &net.Dialer{}, rawServer(t, "", 5*time.Second), "?username=u7"); err == nil || time.Since(t0) > 2*time.Second {
		t.Errorf("silent server: %v after %v", err, time.Since(t0))
	}
}

// TestSSEStopping: closing the sockets at "stop" counts no disconnect;
// the same close while running does.
func TestSSEStopping(t *testing.T) {
	for _, stopping := range []bool{true, false} {
		// One chunk, and the stream stays open.
		hb := ": heartbeat\n\n"
		tg := rawServer(t, fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n", len(hb), hb), 5*time.Second)
		conn, st, err := dialSSE(context.Background(), &net.Dialer{}, tg, "?username=u1")
		if err != nil {
			t.Fatal(err)
		}
		s := &childState{out: bufio.NewWriter(nil)}
		c := &benchConn{conn: conn, sse: st, user: "u1", done: make(chan struct{})}
		go s.readSSE(c, 0)
		deadline := time.Now().Add(2 * time.Second)
		for s.heartbeats.Load() == 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		s.stopping.Store(stopping)
		conn.Close()
		<-c.done
		if got, want := s.disconnects.Load(), map[bool]int64{true: 0, false: 1}[stopping]; got != want || s.beatStreams.Load() != 1 {
			t.Errorf("stopping %v: %d disconnects (want %d), %d streams with a heartbeat", stopping, got, want, s.beatStreams.Load())
		}
	}
}

// TestSSEHeartbeatNote: after a settle that covers the daemon's heartbeat
// the report says whether every stream had one when RSS was read.
func TestSSEHeartbeatNote(t *testing.T) {
	kids := []*child{{}, {}}
	kids[0].heartbeats.Store(3)
	kids[0].beatStreams.Store(2)
	kids[1].heartbeats.Store(1)
	kids[1].beatStreams.Store(1)
	for _, tc := range []struct {
		conns  int
		settle time.Duration
		note   string
	}{
		{3, 17 * time.Second, "after every stream had received a heartbeat (3 of 3 streams, 4 heartbeats, after a 17s settle)"},
		{4, 17 * time.Second, "only 3 of 4 streams"},
		{4, time.Second, ""},
	} {
		r := &report{Connections: tc.conns}
		r.sseHeartbeatsAtRSS(kids, tc.settle)
		if r.SSEHeartbeatsAtRSS != 4 || r.SSEStreamsBeatAtRSS != 3 {
			t.Errorf("heartbeats %d, streams %d", r.SSEHeartbeatsAtRSS, r.SSEStreamsBeatAtRSS)
		}
		if got := strings.Join(r.Notes, "|"); (tc.note == "") != (got == "") || !strings.Contains(got, tc.note) {
			t.Errorf("%d streams, settle %s: notes %q, want %q", tc.conns, tc.settle, got, tc.note)
		}
	}
}
