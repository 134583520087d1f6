package main

import (
	"context"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
)

// instanceID returns td's instance id, the value it holds SoloKey with.
func instanceID(td *testDaemon) string {
	_, id, _ := strings.Cut(td.d.instance, "/")
	return id
}

// holdsSoleKey reports whether td says it holds SoloKey and Redis agrees.
func holdsSoleKey(td *testDaemon, rdb *redis.Client) bool {
	return td.d.sub.status().soleRecorder && rdb.Get(context.Background(), history.SoloKey).Val() == instanceID(td)
}

// expectRecorded reads len(payloads) events from each stream and checks
// that they are payloads, in order, with the ids of their entries in
// user's history, which holds each of them once.
func expectRecorded(t *testing.T, rdb *redis.Client, user string, payloads []string, streams ...histStream) {
	t.Helper()
	waitRecorded(t, rdb, user, payloads[len(payloads)-1])
	ids := make(map[string]string)
	count := make(map[string]int)
	for _, e := range streamEntries(t, rdb, user) {
		ids[e.Data] = e.ID
		count[e.Data]++
	}
	for _, p := range payloads {
		if count[p] != 1 {
			t.Fatalf("%s is %d times in the history, want once", p, count[p])
		}
	}
	for i, s := range streams {
		for _, p := range payloads {
			f := nextFrame(t, s)
			if f.Control != "" || f.Data != p || f.ID != ids[p] {
				t.Fatalf("connection %d: %s, want %s %s", i, f, ids[p], p)
			}
		}
	}
}

// TestAnInstanceAloneAppendsWithoutALookupUntilAnotherReadsEvents: the
// only instance on a Redis holds SoloKey and records plain PUBLISHes
// without looking them up (no XRANGE); once a second instance reads
// events, it gives the key up within a check and both record with the
// lookup, agreeing on every id; once the second stops, the first holds
// the key again.
func TestAnInstanceAloneAppendsWithoutALookupUntilAnotherReadsEvents(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	rdb := r.client()
	a := startDaemon(t, r, map[string]string{"LOG_LEVEL": "info"})
	a.waitReady()
	// The line comes once the marker is published: every event published
	// from now on is appended alone.
	eventually(t, 5*time.Second, "the only instance holding the key", func() bool {
		return holdsSoleKey(a, rdb) && strings.Contains(a.logs.String(), "appending events without looking them up")
	})
	q := url.Values{"username": {"u"}}
	onA := openHistory(t, historyTransports()[0], a.baseURL, q, "")
	eventually(t, 5*time.Second, "connection registered", func() bool { return a.d.hub.connectionCount("u") == 1 })
	if err := rdb.ConfigResetStat(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	alone := numbered("u", 20)
	publishNow(t, rdb, "u", alone...)
	// Delivered once recorded; counted before the test reads the history.
	var got []histFrame
	for range alone {
		got = append(got, nextFrame(t, onA))
	}
	if n := commandCalls(t, rdb, "xrange"); n != 0 {
		t.Fatalf("%d XRANGE calls while recording alone, want none", n)
	}
	if n := commandCalls(t, rdb, "evalsha"); n == 0 {
		t.Fatal("no script call recorded the events")
	}
	entries := streamEntries(t, rdb, "u")
	if len(entries) != len(alone) {
		t.Fatalf("%d entries for %d events", len(entries), len(alone))
	}
	for i, e := range entries {
		if e.Data != alone[i] || got[i].Data != alone[i] || got[i].ID != e.ID {
			t.Fatalf("event %d: entry %s %s, delivered %s, want %s", i, e.ID, e.Data, got[i], alone[i])
		}
	}

	b := startDaemon(t, r, map[string]string{"LOG_LEVEL": "info"})
	b.waitReady()
	eventually(t, 5*time.Second, "the key given up", func() bool {
		return !a.d.sub.status().soleRecorder && rdb.Exists(t.Context(), history.SoloKey).Val() == 0
	})
	onB := openHistory(t, historyTransports()[0], b.baseURL, q, "")
	eventually(t, 5*time.Second, "connection registered", func() bool { return b.d.hub.connectionCount("u") == 1 })
	together := numbered("u", 40)[20:]
	publishNow(t, rdb, "u", together...)
	expectRecorded(t, rdb, "u", together, onA, onB)
	if b.d.sub.status().soleRecorder {
		t.Fatal("the second instance holds the key beside the first")
	}

	if err := b.stop(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the key held again once alone", func() bool { return holdsSoleKey(a, rdb) })
}

// TestAnInstanceAppendsNothingWhileAnotherHoldsTheSoleRecorderKey: the
// fence, through the daemon. While another instance holds SoloKey, a
// plain PUBLISH that instance has not appended waits: not recorded, not
// delivered. Once the key is gone, this instance records and delivers it.
func TestAnInstanceAppendsNothingWhileAnotherHoldsTheSoleRecorderKey(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	rdb := r.client()
	if err := rdb.Set(t.Context(), history.SoloKey, "0123456789abcdef", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	a := startDaemon(t, r, map[string]string{"LOG_LEVEL": "info"})
	a.waitReady()
	s := openHistory(t, historyTransports()[0], a.baseURL, url.Values{"username": {"u"}}, "")
	eventually(t, 5*time.Second, "connection registered", func() bool { return a.d.hub.connectionCount("u") == 1 })
	payload := event("u", 1)
	publishNow(t, rdb, "u", payload)
	time.Sleep(300 * time.Millisecond)
	if n := rdb.XLen(t.Context(), history.HistoryKey("u")).Val(); n != 0 {
		t.Fatalf("%d entries appended while another instance holds the key", n)
	}
	if n := a.d.stats.MessagesReceived.Load(); n != 0 {
		t.Fatalf("%d events delivered before they were recorded", n)
	}
	if a.d.sub.status().soleRecorder {
		t.Fatal("holds the key another instance holds")
	}
	rdb.Del(t.Context(), history.SoloKey)
	expectRecorded(t, rdb, "u", []string{payload}, s)
}

// TestOnlyAnotherInstancesPubSubClientStopsTheSoleRecorder: a pub/sub
// client named by another application does not count as an instance; an
// unnamed one (an instance from before the names, a redis-cli) does.
func TestOnlyAnotherInstancesPubSubClientStopsTheSoleRecorder(t *testing.T) {
	skipShort(t, "three sole recorder checks, 1 s apart")
	t.Parallel()
	r := startRedis(t)
	rdb := r.client()
	a := startDaemon(t, r, map[string]string{"LOG_LEVEL": "info"})
	a.waitReady()
	eventually(t, 5*time.Second, "the only instance holding the key", func() bool { return holdsSoleKey(a, rdb) })
	subscribe := func(name string) *redis.PubSub {
		c := redis.NewClient(&redis.Options{Addr: r.addr(), ClientName: name})
		t.Cleanup(func() { c.Close() })
		ps := c.PSubscribe(t.Context(), channelPattern)
		if _, err := ps.Receive(t.Context()); err != nil {
			t.Fatal(err)
		}
		return ps
	}
	app := subscribe("billing-worker")
	// A check.
	time.Sleep(soleRenew + 200*time.Millisecond)
	if !holdsSoleKey(a, rdb) {
		t.Fatal("another application's pub/sub client made the instance give the key up")
	}
	app.Close()
	unnamed := subscribe("")
	eventually(t, 5*time.Second, "the key given up for an unnamed pub/sub client", func() bool {
		return !a.d.sub.status().soleRecorder && rdb.Exists(t.Context(), history.SoloKey).Val() == 0
	})
	unnamed.Close()
	eventually(t, 5*time.Second, "the key held again", func() bool { return holdsSoleKey(a, rdb) })
}

// TestPlainEventsAreRecordedOnceWhileTheSoleRecorderChanges publishes
// plain events steadily to a few users while a second instance starts
// beside the sole recorder (which gives the key up), and then the first
// stops (the second takes the key), until the second appends alone. Every
// event is in each user's history once, in publish order, and every
// connection got each event it was open for with that entry's id.
func TestPlainEventsAreRecordedOnceWhileTheSoleRecorderChanges(t *testing.T) {
	skipShort(t, "two instances handing the sole recorder key over under a steady publisher (about 4 s)")
	t.Parallel()
	r := startRedis(t)
	rdb := r.client()
	users := []string{"u0", "u1", "u2"}
	a := startDaemon(t, r, map[string]string{"LOG_LEVEL": "info"})
	a.waitReady()
	eventually(t, 5*time.Second, "the only instance holding the key", func() bool { return holdsSoleKey(a, rdb) })

	type reader struct {
		user   string
		stream histStream
	}
	var readers []reader
	open := func(td *testDaemon) {
		for _, u := range users {
			readers = append(readers, reader{user: u, stream: openHistory(t, historyTransports()[0], td.baseURL, url.Values{"username": {u}}, "")})
		}
		eventually(t, 5*time.Second, "connections registered", func() bool { return td.d.hub.connectionCount(users[len(users)-1]) == 1 })
	}
	open(a)

	// One event per user every 10 ms until stop.
	stop := make(chan struct{})
	var perUser int
	var published sync.WaitGroup
	published.Go(func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for ; ; perUser++ {
			pipe := rdb.Pipeline()
			for _, u := range users {
				pipe.Publish(context.Background(), channelPrefix+u, event(u, perUser))
			}
			if _, err := pipe.Exec(context.Background()); err != nil {
				t.Errorf("publish: %v", err)
				return
			}
			select {
			case <-stop:
				perUser++
				return
			case <-tick.C:
			}
		}
	})
	time.Sleep(time.Second)
	b := startDaemon(t, r, map[string]string{"LOG_LEVEL": "info"})
	b.waitReady()
	open(b)
	eventually(t, 5*time.Second, "the key given up", func() bool { return rdb.Exists(t.Context(), history.SoloKey).Val() == 0 })
	time.Sleep(300 * time.Millisecond)
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the second instance holding the key", func() bool { return holdsSoleKey(b, rdb) })
	// The second instance appends alone from its marker on.
	eventually(t, 5*time.Second, "the second instance appending alone", func() bool {
		return strings.Count(b.logs.String(), "appending events without looking them up") > 0
	})
	time.Sleep(300 * time.Millisecond)
	close(stop)
	published.Wait()

	ids := make(map[string]string)
	for _, u := range users {
		waitRecorded(t, rdb, u, event(u, perUser-1))
		entries := streamEntries(t, rdb, u)
		if len(entries) != perUser {
			t.Fatalf("%s: %d entries for %d events", u, len(entries), perUser)
		}
		for i, e := range entries {
			if e.Data != event(u, i) {
				t.Fatalf("%s: entry %d is %s, want %s", u, i, e.Data, event(u, i))
			}
			ids[e.Data] = e.ID
		}
	}
	for _, rd := range readers {
		// Until the stream ends (its instance stopped) or the user's last
		// event.
		last, n := event(rd.user, perUser-1), 0
		for {
			f, err := rd.stream.NextWithin(5 * time.Second)
			if err != nil {
				break
			}
			if f.Control != "" || f.ID != ids[f.Data] {
				t.Fatalf("%s: %s, want the id of its entry %s", rd.user, f, ids[f.Data])
			}
			n++
			if f.Data == last {
				break
			}
		}
		if n < 50 {
			t.Fatalf("%s: %d events received", rd.user, n)
		}
	}
}
