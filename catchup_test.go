package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

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
	conn := dialWith(t, &websocket.Dialer{Subprotocols: []string{subprotocolV1}}, url, nil)
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

// pipelineCounter counts what a go-redis client sends: single commands by
// name, and pipelines with the commands in them.
type pipelineCounter struct {
	mu        sync.Mutex
	single    map[string]int
	pipelines int
	piped     map[string]int
}

func (p *pipelineCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (p *pipelineCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		p.mu.Lock()
		p.single[cmd.Name()]++
		p.mu.Unlock()
		return next(ctx, cmd)
	}
}
func (p *pipelineCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		p.mu.Lock()
		p.pipelines++
		for _, c := range cmds {
			p.piped[c.Name()]++
		}
		p.mu.Unlock()
		return next(ctx, cmds)
	}
}

func TestRecordingTakesOneRoundTripPerBatchNotPerEvent(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{"LOG_LEVEL": "info"})
	td.waitReady()
	counter := &pipelineCounter{single: map[string]int{}, piped: map[string]int{}}
	td.d.recordRdb.AddHook(counter)
	const users, perUser = 20, 250
	conns := make([]*websocket.Conn, users)
	for u := range users {
		conns[u] = dialV1(t, fmt.Sprintf("%s?username=u%d", td.wsURL, u))
	}
	eventually(t, 5*time.Second, "registered", func() bool { return td.d.hub.connections.Load() == users })
	// Published in bursts, as a busy engine does: the subscription hands
	// over many events at a time.
	ctx := context.Background()
	for i := range perUser {
		pipe := td.pub.Pipeline()
		for u := range users {
			pipe.Publish(ctx, fmt.Sprintf("%su%d", channelPrefix, u), fmt.Sprintf(`{"n":%d}`, i))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	const total = users * perUser
	eventually(t, 30*time.Second, "all recorded", func() bool { return td.d.stats.MessagesReceived.Load() == total })
	for u, conn := range conns {
		last := ""
		for i := range perUser {
			f := readV1(t, conn)
			if string(f.Data) != fmt.Sprintf(`{"n":%d}`, i) || f.ID == "" || f.ID == last {
				t.Fatalf("user %d, event %d: %+v", u, i, f)
			}
			last = f.ID
		}
	}
	counter.mu.Lock()
	defer counter.mu.Unlock()
	t.Logf("%d events recorded in %d pipelines (%d script calls)", total, counter.pipelines, counter.piped["evalsha"])
	if counter.single["evalsha"] != 0 || counter.single["eval"] != 0 {
		t.Fatalf("scripts sent outside pipelines: %v", counter.single)
	}
	if counter.pipelines >= total/4 {
		t.Fatalf("%d pipelines for %d events: recording is not batched", counter.pipelines, total)
	}
	if counter.piped["evalsha"] > counter.pipelines*users {
		t.Fatalf("%d script calls in %d pipelines: more than one per user per batch", counter.piped["evalsha"], counter.pipelines)
	}
}

func TestLiveEventsHeldDuringACatchUpAreDedupedOrReadAgainAfterAnOverflow(t *testing.T) {
	h := newTestHub(4, 1<<20)
	c := newSocketlessClient(h, "ida")
	c.catchUp = &catchUp{}
	if err := h.reserve("ida"); err != nil {
		t.Fatal(err)
	}
	if err := h.add(c); err != nil {
		t.Fatal(err)
	}
	ev := func(id string) *message { return newEvent(id, []byte(`{}`), time.Now()) }
	// More than a send queue's worth arrives during the catch-up: they
	// are dropped, and the catch-up is told to read on.
	for i := 1; i <= 6; i++ {
		if n := h.broadcast("ida", ev(fmt.Sprintf("%d-0", i))); n != 1 {
			t.Fatalf("broadcast took %d", n)
		}
	}
	if !c.finishCatchUp("3-0") {
		t.Fatal("an overflow of held events did not ask for another read")
	}
	// Then: held events the history gave are dropped, the others queued.
	for _, id := range []string{"6-0", "7-0", "8-0"} {
		h.broadcast("ida", ev(id))
	}
	if c.finishCatchUp("6-0") {
		t.Fatal("asked for another read without an overflow")
	}
	var got []string
	for _, m := range c.sendQueue {
		got = append(got, m.id)
	}
	if replaying := c.catchUp != nil && !c.catchUp.done; strings.Join(got, " ") != "7-0 8-0" || replaying {
		t.Fatalf("queued %v (replaying %v), want 7-0 8-0 and live", got, replaying)
	}
	if f, _ := h.queuedFrames.Load(), h.queuedBytes.Load(); f != 2 {
		t.Fatalf("send-queue pressure %d frames, want 2", f)
	}
	// An event the catch-up read from the history before the recorder
	// broadcast it comes live too: it is skipped.
	h.broadcast("ida", ev("5-0"))
	if len(c.sendQueue) != 2 {
		t.Fatalf("an event the history gave was queued again: %d queued", len(c.sendQueue))
	}
	// Live from now on.
	h.broadcast("ida", ev("9-0"))
	if len(c.sendQueue) != 3 {
		t.Fatalf("live event not queued: %d", len(c.sendQueue))
	}
}

func TestACatchUpThatCannotReadTheHistoryClosesWith1011(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	td := startDaemon(t, r, nil)
	td.waitReady()
	conn := dialV1(t, td.wsURL+"?username=jo")
	eventually(t, 5*time.Second, "registered", func() bool { return td.d.hub.connectionCount("jo") == 1 })
	td.publish("jo", `{"n":1}`)
	last := readV1(t, conn).ID
	conn.Close()
	r.kill()
	conn = dialV1(t, td.wsURL+"?username=jo&last_event_id="+last)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err := conn.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseInternalServerErr {
		t.Fatalf("got %v, want close 1011", err)
	}
	t.Logf("closed: %v", ce)
}

func TestARecorderForgetsIdleUsersAndItsHorizonMovesToTheNewestForgotten(t *testing.T) {
	r := newRecorder(nil, "", history.Layout{}, history.Retention{}, nil, &Stats{}, nil)
	now := time.Now()
	r.horizon = history.Cursor{After: "100-0"}
	r.cursors["idle1"] = &userCursor{cur: history.Cursor{After: "300-2", Entry: true}, used: now.Add(-cursorIdle - time.Second)}
	r.cursors["idle2"] = &userCursor{cur: history.Cursor{After: "200-0", Entry: true}, used: now.Add(-2 * cursorIdle)}
	r.cursors["busy"] = &userCursor{cur: history.Cursor{After: "900-0", Entry: true}, used: now}
	r.dropIdle(now)
	if _, ok := r.cursors["busy"]; !ok || len(r.cursors) != 1 {
		t.Fatalf("kept %v, want busy only", r.cursors)
	}
	if r.horizon.After != "300-2" || r.horizon.Entry {
		t.Fatalf("horizon %+v, want 300-2 (not an entry of the next user)", r.horizon)
	}
	r.dropIdle(now.Add(2 * cursorIdle))
	if len(r.cursors) != 0 || r.horizon.After != "900-0" {
		t.Fatalf("cursors %v, horizon %+v", r.cursors, r.horizon)
	}
}

func TestManyCatchUpsWithOneReadAtATimeAndSmallPagesMissNothing(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{
		"HISTORY_REPLAY_CONCURRENCY": "1", "HISTORY_REPLAY_PAGE": "5", "LOG_LEVEL": "info"})
	td.waitReady()
	const clients, behind = 20, 37
	last := make([]string, clients)
	for i := range clients {
		conn := dialV1(t, fmt.Sprintf("%s?username=c%d", td.wsURL, i))
		eventually(t, 5*time.Second, "registered", func() bool { return td.d.hub.connectionCount(fmt.Sprintf("c%d", i)) == 1 })
		td.publish(fmt.Sprintf("c%d", i), `{"n":0}`)
		last[i] = readV1(t, conn).ID
		conn.Close()
	}
	eventually(t, 5*time.Second, "all gone", func() bool { return td.d.hub.connections.Load() == 0 })
	for n := 1; n <= behind; n++ {
		for i := range clients {
			td.publish(fmt.Sprintf("c%d", i), fmt.Sprintf(`{"n":%d}`, n))
		}
	}
	eventually(t, 10*time.Second, "recorded", func() bool { return td.d.stats.MessagesReceived.Load() == clients*(behind+1) })
	// All resume at once, while more events are published: the catch-ups
	// take turns at one read of 5 events, and each ends live.
	conns := make([]*websocket.Conn, clients)
	for i := range clients {
		conns[i] = dialV1(t, fmt.Sprintf("%s?username=c%d&last_event_id=%s", td.wsURL, i, last[i]))
	}
	for i := range clients {
		td.publish(fmt.Sprintf("c%d", i), fmt.Sprintf(`{"n":%d}`, behind+1))
	}
	for i, conn := range conns {
		prev := last[i]
		for n := 1; n <= behind+1; n++ {
			f := readV1(t, conn)
			if string(f.Data) != fmt.Sprintf(`{"n":%d}`, n) {
				t.Fatalf("client %d, event %d: got %s", i, n, f.Data)
			}
			a, _ := history.ParseID(prev)
			b, _ := history.ParseID(f.ID)
			if !a.Less(b) {
				t.Fatalf("client %d: id %s after %s", i, f.ID, prev)
			}
			prev = f.ID
		}
	}
	if got := td.d.stats.HistoryReplayed.Load(); got < clients*behind {
		t.Fatalf("%d events replayed, want at least %d", got, clients*behind)
	}
	// The last catch-up's goroutine counts itself out just after its
	// client has the events.
	eventually(t, 2*time.Second, "no catch-up counted", func() bool { return td.d.hub.catchups() == 0 })
}

// redisRefusal is an answer of Redis's own (go-redis's redis.Error).
type redisRefusal struct{}

func (redisRefusal) Error() string { return "WRONGTYPE refused" }
func (redisRefusal) RedisError()   {}

// TestAHistoryReadThatDidNotReachRedisIsTriedAgain: a catch-up's read that
// failed short of Redis (a Cluster node just gone, go-redis not yet told)
// is tried again, a few times, before the connection is given up; an
// answer of Redis's own is not.
func TestAHistoryReadThatDidNotReachRedisIsTriedAgain(t *testing.T) {
	cfg, err := loadConfig(envOf(map[string]string{}))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	t.Cleanup(func() { _ = rdb.Close() })
	p := newCatchUps(rdb, cfg, &Stats{}, slog.New(slog.DiscardHandler), nil)
	want := []history.Event{{ID: "1-0", Data: "{}"}}
	calls := 0
	evs, err := p.read(t.Context(), func(context.Context) ([]history.Event, error) {
		if calls++; calls < 3 {
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
		}
		return want, nil
	})
	if err != nil || calls != 3 || len(evs) != 1 || evs[0] != want[0] {
		t.Fatalf("after 2 refused connects: %v %v, %d calls; want the events on the third", evs, err, calls)
	}
	calls = 0
	if _, err := p.read(t.Context(), func(context.Context) ([]history.Event, error) {
		calls++
		return nil, fmt.Errorf("read history: %w", redisRefusal{})
	}); err == nil || calls != 1 {
		t.Fatalf("Redis's own refusal: %v after %d calls, want it at once", err, calls)
	}
	calls = 0
	if _, err := p.read(t.Context(), func(context.Context) ([]history.Event, error) {
		calls++
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	}); err == nil || calls != 4 {
		t.Fatalf("Redis unreachable: %v after %d calls, want an error after 4", err, calls)
	}
}
