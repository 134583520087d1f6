package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
	"fanout/internal/testclient"
)

// The acceptance tests of issue 11 (history and resume): real redis-server,
// real daemons (in-process where nothing stops, processes where every
// instance is stopped and started again), real sockets.

// historySubprotocol is the WebSocket subprotocol of history-aware clients.
// The history-aware test client (a fanout.v1 WebSocket or an SSE stream)
// is internal/testclient's, shared with the other test tier.
type (
	histFrame     = testclient.Frame
	histStream    = testclient.Stream
	histTransport = testclient.Transport
)

var (
	historyTransports   = testclient.Transports
	resumeQuery         = testclient.ResumeQuery
	newSSEClient        = testclient.NewSSEClient
	dialHistoryWS       = testclient.DialWS
	dialSSE             = testclient.DialSSE
	parseHistoryMessage = testclient.ParseV1
)

const historySubprotocol = testclient.Subprotocol

// numbered returns n distinct events for user, in publish order.
func numbered(user string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = event(user, i)
	}
	return out
}

// The tests' publisher is internal/testclient's too.
var (
	publishSteadily = testclient.PublishSteadily
	plainPublish    = testclient.PlainPublish
	publishNow      = testclient.PublishNow
	streamEntries   = testclient.StreamEntries
	waitRecorded    = testclient.WaitRecorded
)

// checkHistoryKeys checks that user's history is the only history key:
// nothing else (probes included) is recorded.
func checkHistoryKeys(t *testing.T, rdb *redis.Client, user string) {
	t.Helper()
	keys, err := rdb.Keys(t.Context(), "fanout:history:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{history.HistoryKey(user)}; !slices.Equal(keys, want) {
		t.Errorf("history keys %q, want only %q", keys, want)
	}
}

// checkStream checks that user's history is exactly want, with the ids the
// client got.
func checkStream(t *testing.T, rdb *redis.Client, user string, got []histFrame, want []string) {
	t.Helper()
	if n, err := rdb.XLen(t.Context(), history.HistoryKey(user)).Result(); err != nil || n != int64(len(want)) {
		t.Fatalf("XLEN %s = %d (%v), want %d", history.HistoryKey(user), n, err, len(want))
	}
	entries := streamEntries(t, rdb, user)
	for i, e := range entries {
		if e.Data != want[i] || e.ID != got[i].ID {
			t.Fatalf("history entry #%d is %s %s, want %s %s (as delivered)", i, e.ID, e.Data, got[i].ID, want[i])
		}
	}
	checkHistoryKeys(t, rdb, user)
}

// openHistory opens one stream for a test that reads it frame by frame.
func openHistory(t *testing.T, tr histTransport, baseURL string, query url.Values, lastEventID string) histStream {
	t.Helper()
	s, err := tr.Dial(t.Context(), newSSEClient(t), baseURL, query, lastEventID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// nextFrame reads the next frame within 5 s.
func nextFrame(t *testing.T, s histStream) histFrame {
	t.Helper()
	f, err := s.NextWithin(5 * time.Second)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return f
}

// expectEvents reads len(want) frames, which must be want's events in
// order, with their ids.
func expectEvents(t *testing.T, s histStream, want []history.Event) {
	t.Helper()
	for i, w := range want {
		f := nextFrame(t, s)
		if f.Control != "" || f.ID != w.ID || f.Data != w.Data {
			t.Fatalf("frame %d of %d: %s, want event %s %s", i+1, len(want), f, w.ID, w.Data)
		}
	}
}

// expectResync reads the next frame, which must be a resync control with
// a reason.
func expectResync(t *testing.T, s histStream) {
	t.Helper()
	f := nextFrame(t, s)
	var c struct{ Control, Reason string }
	if err := json.Unmarshal([]byte(f.Data), &c); f.Control != "resync" || err != nil || c.Control != "resync" || c.Reason == "" {
		t.Fatalf("first frame %s, want {\"control\":\"resync\",\"reason\":\"…\"}", f)
	}
}

// expectLive publishes payload and reads it as the next frame, with an id
// after after.
func expectLive(t *testing.T, s histStream, rdb *redis.Client, user, payload, after string) {
	t.Helper()
	publishNow(t, rdb, user, payload)
	f := nextFrame(t, s)
	id, ok := history.ParseID(f.ID)
	prev, _ := history.ParseID(after)
	if f.Control != "" || f.Data != payload || !ok || !prev.Less(id) {
		t.Fatalf("live frame %s, want event %s with an id after %s", f, payload, after)
	}
}

// unknownIDBetween returns an id that is not in entries but lies between
// two of them, the newest such.
func unknownIDBetween(t *testing.T, entries []history.Event) string {
	t.Helper()
	for i := len(entries) - 2; i >= 0; i-- {
		a, _ := history.ParseID(entries[i].ID)
		b, _ := history.ParseID(entries[i+1].ID)
		if mid := (history.ID{Ms: a.Ms, Seq: a.Seq + 1}); mid.Less(b) {
			return mid.String()
		}
	}
	t.Fatal("no gap between the retained ids")
	return ""
}

// TestResumeFromATrimmedMalformedOrUnknownIDGetsResyncThenEveryRetainedEvent:
// a client whose last id is no longer retained, was never an id, or is not
// in the history, gets one resync first, then everything retained, then
// live events; a retained id gets what follows it without resync.
func TestResumeFromATrimmedMalformedOrUnknownIDGetsResyncThenEveryRetainedEvent(t *testing.T) {
	// Not parallel: with HISTORY_MAX_LEN=100 an instance starved of CPU by
	// the other tests can fall more than 100 events behind the other one
	// during the burst, and then delivers that user's events without ids.
	r := startRedis(t)
	daemons, bases := startInstances(t, r, 2, map[string]string{"HISTORY_MAX_LEN": "100", "LOG_LEVEL": "info"})
	pub := r.client()
	const user = "trimmed"
	payloads := numbered(user, 1000)
	publishNow(t, pub, user, payloads[0])
	first := waitRecorded(t, pub, user, payloads[0])
	publishNow(t, pub, user, payloads[1:]...)
	waitRecorded(t, pub, user, payloads[len(payloads)-1])
	// Both instances done with the burst: one that lags behind the
	// retention would still hand its old events, without ids, to the
	// connections below.
	for _, td := range daemons {
		eventually(t, 10*time.Second, "instance done with the burst", func() bool {
			return td.d.stats.MessagesReceived.Load() >= uint64(len(payloads))
		})
	}
	if retained := streamEntries(t, pub, user); len(retained) >= len(payloads) || retained[0].ID == first.ID {
		t.Fatalf("%d of %d events retained with HISTORY_MAX_LEN=100, from %s: the first was not trimmed", len(retained), len(payloads), retained[0].ID)
	}
	live := 0
	for _, tr := range historyTransports() {
		cases := []struct {
			name   string
			lastID func(t *testing.T, retained []history.Event) string
			resync bool
		}{
			{"trimmed", func(*testing.T, []history.Event) string { return first.ID }, true},
			{"malformed", func(*testing.T, []history.Event) string { return "not-an-id" }, true},
			{"malformed sequence", func(_ *testing.T, retained []history.Event) string {
				ms, _, _ := strings.Cut(retained[0].ID, "-")
				return ms + "-x"
			}, true},
			{"unknown between two retained", unknownIDBetween, true},
			{"unknown after the newest", func(_ *testing.T, retained []history.Event) string {
				newest, _ := history.ParseID(retained[len(retained)-1].ID)
				return history.ID{Ms: newest.Ms + 3_600_000}.String()
			}, true},
			{"retained", func(_ *testing.T, retained []history.Event) string { return retained[len(retained)-10].ID }, false},
			{"newest", func(_ *testing.T, retained []history.Event) string { return retained[len(retained)-1].ID }, false},
		}
		for i, tc := range cases {
			t.Run(tr.Name+"/"+tc.name, func(t *testing.T) {
				retained := streamEntries(t, pub, user)
				lastID := tc.lastID(t, retained)
				query, header := resumeQuery(tr, user, lastID, i)
				s := openHistory(t, tr, bases[i%len(bases)], query, header)
				want := retained
				if tc.resync {
					expectResync(t, s)
				} else {
					at := slices.IndexFunc(retained, func(e history.Event) bool { return e.ID == lastID })
					want = retained[at+1:]
				}
				expectEvents(t, s, want)
				live++
				expectLive(t, s, pub, user, event(user, 1000+live), retained[len(retained)-1].ID)
			})
		}
	}
}

// TestHistoryNStartsALateJoinerWithTheLastNEventsThenLive: ?history=N
// replays the last N retained events (the last HISTORY_MAX_LEN when N is
// larger), then live events, with no gap even while events keep
// coming.
func TestHistoryNStartsALateJoinerWithTheLastNEventsThenLive(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	td := startDaemon(t, r, map[string]string{"HISTORY_MAX_LEN": "100", "LOG_LEVEL": "info"})
	td.waitReady()
	pub := r.client()
	const user = "latejoiner"
	next := 0
	publishUpTo := func(n int) {
		var batch []string
		for ; next < n; next++ {
			batch = append(batch, event(user, next))
		}
		publishNow(t, pub, user, batch...)
		waitRecorded(t, pub, user, batch[len(batch)-1])
	}
	join := func(t *testing.T, tr histTransport, n int) histStream {
		q := url.Values{"username": {user}, "history": {strconv.Itoa(n)}}
		return openHistory(t, tr, td.baseURL, q, "")
	}

	publishUpTo(50)
	for _, tr := range historyTransports() {
		t.Run(tr.Name+"/last 10 of 50", func(t *testing.T) {
			retained := streamEntries(t, pub, user)
			s := join(t, tr, 10)
			expectEvents(t, s, retained[len(retained)-10:])
			next++
			expectLive(t, s, pub, user, event(user, next-1), retained[len(retained)-1].ID)
		})
	}

	publishUpTo(next + 500)
	for _, tr := range historyTransports() {
		t.Run(tr.Name+"/more than retained", func(t *testing.T) {
			retained := streamEntries(t, pub, user)
			if len(retained) >= 500 {
				t.Fatalf("%d events retained with HISTORY_MAX_LEN=100", len(retained))
			}
			// "MAXLEN ~" keeps at least HISTORY_MAX_LEN events, often more:
			// the replay is capped at HISTORY_MAX_LEN.
			s := join(t, tr, 100000)
			expectEvents(t, s, retained[len(retained)-min(len(retained), 100):])
			next++
			expectLive(t, s, pub, user, event(user, next-1), retained[len(retained)-1].ID)
		})
	}

	for _, tr := range historyTransports() {
		t.Run(tr.Name+"/while publishing", func(t *testing.T) {
			const total = 2000
			payloads := make([]string, total)
			for i := range payloads {
				payloads[i] = fmt.Sprintf(`{"type":"progress","join":%q,"n":%d}`, tr.Name, i)
			}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			var sent atomic.Int64
			publishErr := make(chan error, 1)
			go func() {
				publishErr <- publishSteadily(ctx, payloads, 10, 5*time.Millisecond, plainPublish(pub, user), func(n int) { sent.Store(int64(n)) })
			}()
			eventually(t, 10*time.Second, "500 published", func() bool { return sent.Load() >= 500 })
			s := join(t, tr, 20)
			var got []histFrame
			for len(got) == 0 || got[len(got)-1].Data != payloads[total-1] {
				f, err := s.NextWithin(15 * time.Second)
				if err != nil {
					t.Fatalf("after %d frames (last %v): %v", len(got), got[max(0, len(got)-1):], err)
				}
				got = append(got, f)
			}
			if err := <-publishErr; err != nil {
				t.Fatal(err)
			}
			// The replay, then live events: a run of consecutive events
			// ending with the last one, 20 at least.
			firstN := -1
			for i, f := range got {
				var e struct{ N int }
				if f.Control != "" || json.Unmarshal([]byte(f.Data), &e) != nil || f.Data != payloads[min(e.N, total-1)] {
					t.Fatalf("frame %d: %s, want an event of this run", i, f)
				}
				if i == 0 {
					firstN = e.N
				} else if e.N != firstN+i {
					t.Fatalf("frame %d is event %d after event %d: gap or duplicate at the switch from replay to live", i, e.N, firstN+i-1)
				}
				if i > 0 {
					a, _ := history.ParseID(got[i-1].ID)
					b, ok := history.ParseID(f.ID)
					if !ok || !a.Less(b) {
						t.Fatalf("frame %d has id %q after %q, want increasing ids", i, f.ID, got[i-1].ID)
					}
				}
			}
			if len(got) < 20 {
				t.Fatalf("%d frames, want the 20 replayed at least", len(got))
			}
			t.Logf("joined at event %d of %d", firstN, total)
		})
	}
}

// TestHistoryOffWritesNothingAndGivesNoIDs: with HISTORY=off nothing is
// written to Redis, fanout.v1 frames carry no id, SSE events no id line,
// and plain WebSocket clients get the published bytes as before.
func TestHistoryOffWritesNothingAndGivesNoIDs(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	a := startDaemon(t, r, map[string]string{"HISTORY": "off", "LOG_LEVEL": "info"})
	b := startDaemon(t, r, map[string]string{"HISTORY": "off", "LOG_LEVEL": "info"})
	a.waitReady()
	b.waitReady()
	const user = "nohistory"
	q := url.Values{"username": {user}}
	ws := openHistory(t, historyTransports()[0], a.baseURL, q, "")
	sse := openHistory(t, historyTransports()[1], b.baseURL, q, "")
	plain := a.dial(user)
	eventually(t, 5*time.Second, "connections registered", func() bool {
		return a.d.hub.connectionCount(user) == 2 && b.d.hub.connectionCount(user) == 1
	})
	payloads := []string{event(user, 1), "{\n  \"type\": \"multi-line\"\n}", event(user, 1)}
	publishNow(t, r.client(), user, payloads...)
	for _, p := range payloads {
		for name, s := range map[string]histStream{"fanout.v1": ws, "sse": sse} {
			if f := nextFrame(t, s); f.Control != "" || f.HasID || f.Data != p {
				t.Fatalf("%s client got %s, want %q without id", name, f, p)
			}
		}
		if got := readText(t, plain, 5*time.Second); got != p {
			t.Fatalf("plain client got %q, want %q", got, p)
		}
	}
	if keys, err := r.client().Keys(t.Context(), "fanout:*").Result(); err != nil || len(keys) != 0 {
		t.Fatalf("keys %q (%v) with HISTORY=off, want none", keys, err)
	}
}

// TestHistoryIdenticalPayloadsPublishedBackToBackAreDistinctEvents: byte-
// identical payloads published one after the other with plain PUBLISH to
// three instances are each one event: one entry, one id, delivered once
// each, on every instance with the same id. Both when they are the user's
// first events (no instance has a place in the user's history yet) and
// when every instance has already recorded an event of the user.
func TestHistoryIdenticalPayloadsPublishedBackToBackAreDistinctEvents(t *testing.T) {
	t.Parallel()
	p1, p2 := `{"type":"progress","pct":50}`, "{\n  \"type\": \"heartbeat\"\n}"
	// Runs of identical payloads: "P P", "Q Q Q", ….
	rng := rand.New(rand.NewPCG(11, 11))
	runs := []string{p1, p1}
	for len(runs) < 100 {
		p := p1
		if rng.IntN(2) == 0 {
			p = p2
		}
		runs = append(runs, p)
	}
	cases := []struct {
		name string
		// warm publishes a distinct event first and waits until every
		// instance has delivered it.
		warm     bool
		payloads []string
	}{
		{"two as the user's first events", false, []string{p1, p1}},
		{"two after a first event", true, []string{p1, p1}},
		{"runs of 100 as the user's first events", false, runs},
		{"runs of 100 after a first event", true, runs},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := startRedis(t)
			daemons, _ := startInstances(t, r, 3, map[string]string{"LOG_LEVEL": "info"})
			const user = "twins"
			q := url.Values{"username": {user}}
			ws, sse := historyTransports()[0], historyTransports()[1]
			streams := map[string]histStream{
				"fanout.v1 on instance 0": openHistory(t, ws, daemons[0].baseURL, q, ""),
				"fanout.v1 on instance 1": openHistory(t, ws, daemons[1].baseURL, q, ""),
				"fanout.v1 on instance 2": openHistory(t, ws, daemons[2].baseURL, q, ""),
				"sse on instance 2":       openHistory(t, sse, daemons[2].baseURL, q, ""),
			}
			plain := daemons[1].dial(user)
			eventually(t, 5*time.Second, "connections registered", func() bool {
				return daemons[0].d.hub.connectionCount(user) == 1 && daemons[1].d.hub.connectionCount(user) == 2 &&
					daemons[2].d.hub.connectionCount(user) == 2
			})
			pub := r.client()
			skip := 0
			if tc.warm {
				first := event(user, 0)
				publishNow(t, pub, user, first)
				for name, s := range streams {
					if f := nextFrame(t, s); f.Data != first {
						t.Fatalf("%s got %s, want %s", name, f, first)
					}
				}
				if got := readText(t, plain, 5*time.Second); got != first {
					t.Fatalf("plain client got %q, want %q", got, first)
				}
				skip = 1
			}
			publishNow(t, pub, user, tc.payloads...)

			var entries []history.Event
			eventually(t, 10*time.Second, "every event recorded", func() bool {
				entries = streamEntries(t, pub, user)
				return len(entries) >= skip+len(tc.payloads)
			})
			entries = entries[skip:]
			for name, s := range streams {
				t.Run(name, func(t *testing.T) { expectEvents(t, s, entries[:len(tc.payloads)]) })
			}
			for i, p := range tc.payloads {
				if got := readText(t, plain, 5*time.Second); got != p {
					t.Fatalf("plain client message %d: %q, want %q", i, got, p)
				}
			}
			entries = streamEntries(t, pub, user)[skip:]
			if len(entries) != len(tc.payloads) {
				t.Fatalf("%d history entries for %d publishes", len(entries), len(tc.payloads))
			}
			for i, e := range entries {
				if e.Data != tc.payloads[i] {
					t.Fatalf("entry %d: %q, want %q", i, e.Data, tc.payloads[i])
				}
			}
			checkHistoryKeys(t, pub, user)
		})
	}
}

// TestHistoryABurstToANewUserIsRecordedOnce: a burst of events to a user
// no instance has a place for yet is one entry per event, whoever appends
// it: history.Publisher.PublishAll (what `fanout publish` runs for JSON
// lines), which instances must not record again, or plain PUBLISH seen by
// three instances. Every client gets each event once, with its one id.
func TestHistoryABurstToANewUserIsRecordedOnce(t *testing.T) {
	t.Parallel()
	const burst = 500
	for _, tc := range []struct {
		name      string
		instances int
		publisher bool
	}{
		{"PublishAll, one instance", 1, true},
		{"plain PUBLISH, three instances", 3, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startRedis(t)
			user := "burst"
			q := url.Values{"username": {user}}
			var streams []histStream
			for range tc.instances {
				td := startDaemon(t, r, map[string]string{"LOG_LEVEL": "info"})
				td.waitReady()
				streams = append(streams, openHistory(t, historyTransports()[0], td.baseURL, q, ""))
				eventually(t, 5*time.Second, "connection registered", func() bool { return td.d.hub.connectionCount(user) == 1 })
			}
			payloads := numbered(user, burst)
			pub := r.client()
			var published []string
			if tc.publisher {
				raw := make([][]byte, len(payloads))
				for i, p := range payloads {
					raw[i] = []byte(p)
				}
				ids, err := history.NewPublisher(pub, history.Retention{}).PublishAll(t.Context(), user, raw)
				if err != nil {
					t.Fatal(err)
				}
				published = ids
			} else {
				publishNow(t, pub, user, payloads...)
			}
			for i, s := range streams {
				var ids []string
				for j, p := range payloads {
					f := nextFrame(t, s)
					if f.Control != "" || f.Data != p || published != nil && f.ID != published[j] {
						want := p
						if published != nil {
							want = published[j] + " " + p
						}
						t.Fatalf("instance %d, event %d: %s, want %s", i, j, f, want)
					}
					ids = append(ids, f.ID)
				}
				if published == nil {
					published = ids
					continue
				}
				for j := range ids {
					if ids[j] != published[j] {
						t.Fatalf("instance %d gave event %d the id %s, instance 0 %s", i, j, ids[j], published[j])
					}
				}
			}
			if n := pub.XLen(t.Context(), history.HistoryKey(user)).Val(); n != burst {
				t.Fatalf("%d history entries for %d events", n, burst)
			}
		})
	}
}
