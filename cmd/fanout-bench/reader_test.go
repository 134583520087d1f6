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
	s.read(&benchConn{ws: ws, user: "u7"}, 0)

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
