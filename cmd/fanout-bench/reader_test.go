package main

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestReaderAccounting runs a connection's reader against a server that
// sends crafted frames, and checks the delivery bookkeeping.
func TestReaderAccounting(t *testing.T) {
	now := time.Now().UnixNano()
	frames := [][]byte{
		appendEvent(nil, "u7", 1, now, 1, 256),
		appendEvent(nil, "u7", 1, now, 1, 256), // duplicate
		appendEvent(nil, "u7", 3, now, 1, 256),
		appendEvent(nil, "u7", 2, now, 1, 256),  // out of order (still delivered)
		appendEvent(nil, "u8", 4, now, 1, 256),  // another user's: a leak
		[]byte(`{"type":"other"}`),              // not a bench event
		appendEvent(nil, "u7", 4, now, 2, 5000), // phase 2, larger than the initial buffer
	}
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for _, f := range frames {
			c.WriteMessage(websocket.TextMessage, f)
		}
		c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
		time.Sleep(100 * time.Millisecond)
	}))
	defer srv.Close()
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws?username=u7", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	s := &childState{out: bufio.NewWriter(nil)}
	s.stopping.Store(true) // the close at the end is not a disconnect
	s.read(&benchConn{ws: ws, user: "u7", done: make(chan struct{})}, 0)

	got := map[string]int64{"delivered": s.delivered.Load(), "dups": s.dups.Load(), "ooo": s.ooo.Load(),
		"leaks": s.leaks.Load(), "parse": s.parseErrs.Load(), "disconnects": s.disconnects.Load()}
	want := map[string]int64{"delivered": 4, "dups": 1, "ooo": 1, "leaks": 1, "parse": 1, "disconnects": 0}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
	var h [2]uint64
	for i := range s.hists {
		h[0] += s.hists[i][0].total
		h[1] += s.hists[i][1].total
	}
	if h != [2]uint64{3, 1} || s.lastRecv[1].Load() < now {
		t.Errorf("latency observations per phase %v, last receipt %d", h, s.lastRecv[1].Load())
	}
}

// TestReaderFanoutV1 checks the fanout.v1 framing: ids are taken and must
// increase, controls are counted apart, and a storm connection counts as
// caught up once it holds StormTarget distinct events after "reconnect".
func TestReaderFanoutV1(t *testing.T) {
	now := time.Now().UnixNano()
	wrap := func(id string, seq int64) []byte {
		return append(append([]byte(`{"id":"`+id+`","data":`), appendEvent(nil, "s3", seq, now, 3, 256)...), '}')
	}
	frames := [][]byte{
		[]byte(`{"control":"resync","reason":"trimmed"}`),
		wrap("1700000000000-0", 1),
		wrap("1700000000000-1", 2),
		wrap("1700000000000-1", 3), // id not above the previous one
		wrap("1700000000001-0", 3), // duplicate sequence number
	}
	up := websocket.Upgrader{Subprotocols: []string{"fanout.v1"}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for _, f := range frames {
			c.WriteMessage(websocket.TextMessage, f)
		}
		c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
		time.Sleep(100 * time.Millisecond)
	}))
	defer srv.Close()
	d := websocket.Dialer{Subprotocols: []string{"fanout.v1"}}
	ws, _, err := d.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws?username=s3", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	s := &childState{out: bufio.NewWriter(nil), cfg: childConfig{StormTarget: 3}}
	s.stopping.Store(true)
	s.reconnectAt.Store(now)
	c := &benchConn{ws: ws, user: "s3", v1: ws.Subprotocol() == "fanout.v1", done: make(chan struct{})}
	s.read(c, 0)

	got := map[string]int64{"delivered": s.delivered.Load(), "dups": s.dups.Load(), "controls": s.controls.Load(),
		"with_id": s.withID.Load(), "id_regress": s.idRegress.Load(), "caught_up": s.caughtUp.Load(), "parse": s.parseErrs.Load()}
	want := map[string]int64{"delivered": 3, "dups": 1, "controls": 1, "with_id": 3, "id_regress": 1, "caught_up": 1, "parse": 0}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
	if c.lastID != "1700000000000-1" || len(s.ctlText) != 1 {
		t.Errorf("last id %q, controls kept %q", c.lastID, s.ctlText)
	}
}
