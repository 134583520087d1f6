package main

import (
	"context"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
)

// evalshaCalls returns how many EVALSHA calls Redis has run (INFO
// commandstats).
func evalshaCalls(t *testing.T, rdb *redis.Client) int {
	t.Helper()
	info, err := rdb.Info(t.Context(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(info, "\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_evalsha:calls="); ok {
			n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
			return n
		}
	}
	return 0
}

// TestEnvelopedEventsAreDeliveredWithTheirIDsWithoutARoundTrip: events
// published with the publish script reach every instance's clients with
// the id the script returned (fanout.v1, SSE) or as the payload byte for
// byte (plain clients), and no instance runs the record script for them:
// the publisher's calls are the only EVALSHA Redis sees.
func TestEnvelopedEventsAreDeliveredWithTheirIDsWithoutARoundTrip(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	daemons, _ := startInstances(t, r, 2, nil)
	const user = "enveloped"
	q := url.Values{"username": {user}}
	var streams []histStream
	for _, td := range daemons {
		for _, tr := range historyTransports() {
			streams = append(streams, openHistory(t, tr, td.baseURL, q, ""))
		}
	}
	plain := daemons[1].dial(user)
	eventually(t, 5*time.Second, "connections registered", func() bool {
		return daemons[0].d.hub.connectionCount(user) == 2 && daemons[1].d.hub.connectionCount(user) == 3
	})
	before := evalshaCalls(t, r.client())
	pub := history.NewPublisher(r.client(), history.Retention{})
	payloads := []string{event(user, 1), "{\n  \"type\": \"multi-line\", \"note\": \"#1-0 {}\"\n}", event(user, 1)}
	var ids []string
	for _, p := range payloads[:1] {
		id, err := pub.Publish(t.Context(), user, []byte(p))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	more, err := pub.PublishAll(t.Context(), user, [][]byte{[]byte(payloads[1]), []byte(payloads[2])})
	if err != nil {
		t.Fatal(err)
	}
	ids = append(ids, more...)
	for i, p := range payloads {
		for _, s := range streams {
			if f := nextFrame(t, s); f.Control != "" || f.ID != ids[i] || f.Data != p {
				t.Fatalf("event %d: got %s, want %s %q", i, f, ids[i], p)
			}
		}
		if got := readText(t, plain, 5*time.Second); got != p {
			t.Fatalf("plain client got %q, want %q", got, p)
		}
	}
	if calls := evalshaCalls(t, r.client()) - before; calls != len(payloads) {
		t.Fatalf("Redis ran %d EVALSHA for %d published events: the instances recorded them again", calls, len(payloads))
	}
	if entries := streamEntries(t, r.client(), user); len(entries) != len(payloads) {
		t.Fatalf("the history holds %d entries for %d events", len(entries), len(payloads))
	}
}

// TestPlainAndEnvelopedEventsOfAUserKeepTheirOrderAndOneIDEach: a user's
// events published alternately with plain PUBLISH and with the publish
// script, pipelined so that the instances' batches mix them, reach every
// instance's clients in publish order, each with one id that is the same
// everywhere, and the history holds each event once.
func TestPlainAndEnvelopedEventsOfAUserKeepTheirOrderAndOneIDEach(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{subscribePattern, subscribeUser} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			plainAndEnvelopedEvents(t, map[string]string{"SUBSCRIBE_MODE": mode})
		})
	}
}

func plainAndEnvelopedEvents(t *testing.T, env map[string]string) {
	r := startRedis(t)
	daemons, _ := startInstances(t, r, 3, env)
	const user = "mixed"
	q := url.Values{"username": {user}}
	var streams []histStream
	for _, td := range daemons {
		streams = append(streams, openHistory(t, historyTransports()[0], td.baseURL, q, ""))
	}
	eventually(t, 5*time.Second, "connections registered", func() bool {
		for _, td := range daemons {
			if td.d.hub.connectionCount(user) != 1 {
				return false
			}
		}
		return true
	})
	ctx := context.Background()
	rdb := r.client()
	if err := history.Load(ctx, rdb); err != nil {
		t.Fatal(err)
	}
	script := redis.NewScript(history.PublishSource)
	payloads := numbered(user, 400)
	scripted := make(map[int]*redis.Cmd)
	for start := 0; start < len(payloads); start += 50 {
		pipe := rdb.Pipeline()
		for i := start; i < start+50; i++ {
			if i%3 == 1 {
				pipe.Publish(ctx, history.Channel(user), payloads[i])
				continue
			}
			scripted[i] = script.EvalSha(ctx, pipe, []string{history.HistoryKey(user)},
				history.Channel(user), payloads[i], history.DefaultMaxLen, history.DefaultTTL.Milliseconds())
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	got := make([][]histFrame, len(streams))
	for i, s := range streams {
		for range payloads {
			got[i] = append(got[i], nextFrame(t, s))
		}
	}
	seen := make(map[string]bool)
	for k, p := range payloads {
		f := got[0][k]
		if f.Control != "" || f.Data != p || f.ID == "" || seen[f.ID] {
			t.Fatalf("event %d: instance 0 got %s, want %q with an id of its own", k, f, p)
		}
		seen[f.ID] = true
		if cmd := scripted[k]; cmd != nil && cmd.Val() != f.ID {
			t.Fatalf("event %d: published with id %v, delivered with %s", k, cmd.Val(), f.ID)
		}
		for i := range streams[1:] {
			if g := got[i+1][k]; g != f {
				t.Fatalf("event %d: instance %d got %s, instance 0 %s", k, i+1, g, f)
			}
		}
	}
	if entries := streamEntries(t, rdb, user); len(entries) != len(payloads) {
		t.Fatalf("the history holds %d entries for %d events", len(entries), len(payloads))
	}
}

// TestHistoryOffOpensEnvelopesAndGivesNoIDs: with HISTORY=off an event in
// an envelope is delivered as its payload, without an id.
func TestHistoryOffOpensEnvelopesAndGivesNoIDs(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	td := startDaemon(t, r, map[string]string{"HISTORY": "off"})
	td.waitReady()
	const user = "offenvelope"
	v1 := openHistory(t, historyTransports()[0], td.baseURL, url.Values{"username": {user}}, "")
	plain := td.dial(user)
	eventually(t, 5*time.Second, "connections registered", func() bool { return td.d.hub.connectionCount(user) == 2 })
	p := event(user, 1)
	if _, err := history.NewPublisher(r.client(), history.Retention{}).Publish(t.Context(), user, []byte(p)); err != nil {
		t.Fatal(err)
	}
	if f := nextFrame(t, v1); f.Control != "" || f.HasID || f.Data != p {
		t.Fatalf("fanout.v1 client got %s, want %q without id", f, p)
	}
	if got := readText(t, plain, 5*time.Second); got != p {
		t.Fatalf("plain client got %q, want %q", got, p)
	}
}

// TestAnEnvelopedEventWaitsForNoOtherUsersRecording: while the recorder
// is stuck recording one user's plain event, another user's event that
// came with its id is delivered at once; the stuck user's events, plain
// and enveloped, follow in order once the recording goes on.
func TestAnEnvelopedEventWaitsForNoOtherUsersRecording(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	td := startDaemon(t, r, nil)
	td.waitReady()
	q := func(u string) url.Values { return url.Values{"username": {u}} }
	slow := openHistory(t, historyTransports()[0], td.baseURL, q("stuck"), "")
	fast := openHistory(t, historyTransports()[0], td.baseURL, q("other"), "")
	eventually(t, 5*time.Second, "connections registered", func() bool {
		return td.d.hub.connectionCount("stuck") == 1 && td.d.hub.connectionCount("other") == 1
	})
	stall := make(chan struct{})
	rec := td.d.sub.(*patternSubscription).sink.(*recorder)
	rec.stall.Store(&stall)
	pub := history.NewPublisher(r.client(), history.Retention{})

	plain := event("stuck", 1)
	publishNow(t, r.client(), "stuck", plain)
	eventually(t, 5*time.Second, "the plain event queued at the recorder", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return rec.queued["stuck"] == 1
	})
	stuckID, err := pub.Publish(t.Context(), "stuck", []byte(event("stuck", 2)))
	if err != nil {
		t.Fatal(err)
	}
	otherID, err := pub.Publish(t.Context(), "other", []byte(event("other", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if f := nextFrame(t, fast); f.ID != otherID || f.Data != event("other", 1) {
		t.Fatalf("other user got %s, want %s at once", f, otherID)
	}
	// Its own enveloped event waits behind its plain one.
	close(stall)
	first := nextFrame(t, slow)
	if first.Data != plain || first.ID == "" {
		t.Fatalf("stuck user's first event %s, want %q with an id", first, plain)
	}
	if f := nextFrame(t, slow); f.ID != stuckID || f.Data != event("stuck", 2) {
		t.Fatalf("stuck user's second event %s, want %s", f, stuckID)
	}
}
