package main

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"fanout/history"
)

// postAck POSTs body to td's /ack as username and returns the status and
// the one-line body.
func postAck(t *testing.T, td *testDaemon, username, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(td.baseURL+"/ack?username="+username, "text/plain", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	return resp.StatusCode, refusedLineOrEmpty(resp)
}

func refusedLineOrEmpty(resp *http.Response) string {
	var b strings.Builder
	buf := make([]byte, 512)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return strings.TrimSuffix(b.String(), "\n")
		}
	}
}

// xranges returns how many XRANGE commands Redis has run (the ack script
// runs one per user and write).
func xranges(t *testing.T, r *redisServer) int {
	t.Helper()
	info, err := r.client().Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_xrange:calls="); ok {
			n, _ := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
			return n
		}
	}
	return 0
}

func TestReadReceiptsAcrossInstancesMoveOnlyForwardAndArePublished(t *testing.T) {
	skipShort(t, "two daemons and several one-second write periods")
	t.Parallel()
	r := startRedis(t)
	td1 := startDaemon(t, r, map[string]string{"PRESENCE": "off"})
	td2 := startDaemon(t, r, map[string]string{"PRESENCE": "off"})
	td1.waitReady()
	td2.waitReady()
	ps := r.client().Subscribe(t.Context(), history.DefaultReceiptsChannel)
	defer ps.Close()
	if _, err := ps.Receive(t.Context()); err != nil {
		t.Fatal(err)
	}
	receipts := ps.Channel()
	nextReceipt := func(d time.Duration) string {
		select {
		case m := <-receipts:
			return m.Payload
		case <-time.After(d):
			return ""
		}
	}
	seen := func() string {
		id, err := history.Layout{}.Seen(context.Background(), r.client(), "alice")
		if err != nil {
			t.Fatal(err)
		}
		return id
	}

	ws := dialV1(t, td1.wsURL+"?username=alice")
	eventually(t, 5*time.Second, "registered", func() bool { return td1.d.hub.connectionCount("alice") == 1 })
	var ids []string
	for i := range 3 {
		td1.publish("alice", `{"n":`+strconv.Itoa(i)+`}`)
		ids = append(ids, readV1(t, ws).ID)
	}
	time.Sleep(5 * time.Millisecond) // a millisecond of its own: ids are per user
	td1.publish("bob", `{"n":9}`)
	// Recorded a moment after it is published (bob has no connection to
	// wait for).
	var bobs []history.Event
	eventually(t, 5*time.Second, "bob's event recorded", func() bool {
		var err error
		bobs, err = history.After(context.Background(), r.client(), "bob", "", 10)
		return err == nil && len(bobs) == 1
	})

	// A WebSocket ack, many times within a second: one write.
	before := xranges(t, r)
	for range 10 {
		if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"ack":"`+ids[1]+`"}`)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 3*time.Second, "alice's seen id at the second event", func() bool { return seen() == ids[1] })
	if got := nextReceipt(2 * time.Second); got != `{"username":"alice","seen":"`+ids[1]+`"}` {
		t.Fatalf("receipt %q", got)
	}
	if n := xranges(t, r) - before; n > 2 {
		t.Errorf("10 acks within a second cost %d ack script runs, want at most 2 (one write per user per second)", n)
	}

	// Over SSE's POST, on the other instance: a lower id does not move it
	// back; an id not in alice's history (bob's, or none's) is ignored
	// and counted; the highest moves it on, published a second after the
	// last publication at most.
	// (Acks of one user within a second are one write of the highest:
	// each is sent once the one before was written.)
	for i, id := range []string{ids[0], bobs[0].ID, "1-0"} {
		if status, line := postAck(t, td2, "alice", `{"id":"`+id+`"}`); status != http.StatusNoContent {
			t.Fatalf("POST /ack %s: %d %q", id, status, line)
		}
		if i == 0 {
			time.Sleep(1500 * time.Millisecond)
			continue
		}
		t.Logf("ack %s (alice %v)", id, ids)
		eventually(t, 3*time.Second, "the ack ignored", func() bool { return td2.d.stats.ReceiptsIgnored.Load() == uint64(i) })
	}
	if got := seen(); got != ids[1] {
		t.Fatalf("seen %s after lower acks, want %s", got, ids[1])
	}
	if got := td2.d.stats.ReceiptsRecorded.Load(); got != 0 {
		t.Fatalf("receipts_recorded %d after a lower ack, want 0", got)
	}
	if status, _ := postAck(t, td2, "alice", `{"id":"`+ids[2]+`"}`); status != http.StatusNoContent {
		t.Fatalf("POST /ack: %d", status)
	}
	if got := nextReceipt(3 * time.Second); got != `{"username":"alice","seen":"`+ids[2]+`"}` {
		t.Fatalf("receipt %q", got)
	}
	if got := nextReceipt(1500 * time.Millisecond); got != "" {
		t.Fatalf("published again: %q", got)
	}
	if got := td1.d.stats.ReceiptsRecorded.Load() + td2.d.stats.ReceiptsRecorded.Load(); got != 2 {
		t.Fatalf("receipts_recorded %d, want 2", got)
	}

	// Bad bodies get a 400 with one line.
	for _, body := range []string{`{"id":"latest"}`, `nonsense`, `{}`} {
		status, line := postAck(t, td2, "alice", body)
		if status != http.StatusBadRequest || line == "" || strings.Contains(line, "\n") || !strings.Contains(line, "/ack") {
			t.Errorf("POST /ack %s: %d %q, want 400 with one line", body, status, line)
		}
	}

	// fanout seen.
	env := map[string]string{"REDIS_HOST": "127.0.0.1", "REDIS_PORT": strconv.Itoa(r.Port)}
	res := runCLI(t, env, "seen", "alice", "nobody")
	if res.code != 0 || res.stdout != `{"username":"alice","seen":"`+ids[2]+`"}`+"\n"+`{"username":"nobody","seen":null}`+"\n" {
		t.Fatalf("fanout seen: %d %q %q", res.code, res.stdout, res.stderr)
	}
}

func TestAcksWithHistoryOffAreRefused(t *testing.T) {
	t.Parallel()
	td := startDaemon(t, startRedis(t), map[string]string{"HISTORY": "off"})
	td.waitReady()
	status, line := postAck(t, td, "alice", `{"id":"1-0"}`)
	if status != http.StatusBadRequest || !strings.Contains(line, "HISTORY=off") {
		t.Fatalf("POST /ack with HISTORY=off: %d %q", status, line)
	}
}
