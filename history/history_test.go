package history

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/internal/testproc"
)

func client(t *testing.T) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: testproc.StartRedis(t).Addr()})
	t.Cleanup(func() { rdb.Close() })
	if err := Load(context.Background(), rdb); err != nil {
		t.Fatal(err)
	}
	return rdb
}

// instance plays one fanout instance's side of recording.
type instance struct {
	rdb       *redis.Client
	cur       Cursor
	retention Retention
}

func (in *instance) record(t *testing.T, user string, payloads ...string) []Recorded {
	t.Helper()
	return in.recordAs(t, "", user, payloads...)
}

// recordAs is record naming the instance owner in the fence of SoloKey
// ("" for none, as Record).
func (in *instance) recordAs(t *testing.T, owner, user string, payloads ...string) []Recorded {
	t.Helper()
	ctx := context.Background()
	pipe := in.rdb.Pipeline()
	rec := Layout{}.RecordUsersAs(ctx, pipe, in.retention, owner, []UserEvents{{Username: user, Cursor: in.cur, Payloads: payloads}})
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatalf("record: %v", err)
	}
	out, cur, err := rec.Result()
	if err != nil {
		t.Fatal(err)
	}
	in.cur = cur
	return out
}

// subscribed returns a new instance with the horizon of one that
// subscribes now.
func subscribed(t *testing.T, rdb *redis.Client) *instance {
	t.Helper()
	now, err := rdb.Time(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return &instance{rdb: rdb, cur: Horizon(now)}
}

func streamLen(t *testing.T, rdb *redis.Client, user string) int64 {
	n, err := rdb.XLen(context.Background(), HistoryKey(user)).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestThreeInstancesRecordEachEventOnceWithTheSameID(t *testing.T) {
	rdb := client(t)
	ins := []*instance{{rdb: rdb}, {rdb: rdb}, {rdb: rdb}}
	var payloads []string
	for i := range 200 {
		// Every fifth payload repeats the one before it: still two events.
		payloads = append(payloads, fmt.Sprintf(`{"n":%d}`, i-i%5/4))
	}
	ids := make([][]string, len(ins))
	// The instances see the same sequence, in different batch sizes and
	// interleavings.
	pos := make([]int, len(ins))
	for step := 0; ; step++ {
		done := true
		for k, in := range ins {
			if pos[k] == len(payloads) {
				continue
			}
			done = false
			n := min(1+(step*(k+1))%7, len(payloads)-pos[k])
			for _, r := range in.record(t, "alice", payloads[pos[k]:pos[k]+n]...) {
				ids[k] = append(ids[k], r.ID)
			}
			pos[k] += n
		}
		if done {
			break
		}
	}
	if n := streamLen(t, rdb, "alice"); n != int64(len(payloads)) {
		t.Fatalf("stream holds %d entries, want %d", n, len(payloads))
	}
	for k := 1; k < len(ins); k++ {
		for i := range ids[0] {
			if ids[k][i] != ids[0][i] {
				t.Fatalf("event %d: instance %d has id %s, instance 0 %s", i, k, ids[k][i], ids[0][i])
			}
		}
	}
	evs, err := After(context.Background(), rdb, "alice", "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range evs {
		if e.Data != payloads[i] || e.ID != ids[0][i] {
			t.Fatalf("entry %d is %s %s, want %s %s", i, e.ID, e.Data, ids[0][i], payloads[i])
		}
	}
}

func TestIdenticalPayloadsOneAfterTheOtherAreTwoEvents(t *testing.T) {
	rdb := client(t)
	a, b := &instance{rdb: rdb}, &instance{rdb: rdb}
	// Both have a place in bob's history, as instances running for a
	// while do (for an instance without one, see the exception below).
	a.record(t, "bob", `{"n":0}`)
	b.record(t, "bob", `{"n":0}`)
	first := a.record(t, "bob", `{"same":1}`)[0]
	second := a.record(t, "bob", `{"same":1}`)[0]
	if first.ID == second.ID || !first.Appended || !second.Appended {
		t.Fatalf("a recorded %+v then %+v: want two appended events", first, second)
	}
	got := b.record(t, "bob", `{"same":1}`, `{"same":1}`)
	if got[0].ID != first.ID || got[1].ID != second.ID || got[0].Appended || got[1].Appended {
		t.Fatalf("b got %+v, want the ids %s and %s, found", got, first.ID, second.ID)
	}
	if n := streamLen(t, rdb, "bob"); n != 3 {
		t.Fatalf("stream holds %d entries, want 3", n)
	}
}

func TestPublishedEventsAreNotRecordedAgain(t *testing.T) {
	rdb := client(t)
	ctx := context.Background()
	pub := NewPublisher(rdb, Retention{})
	sub := rdb.Subscribe(ctx, Channel("carol"))
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	id, err := pub.Publish(ctx, "carol", []byte(`{"x":1}`))
	if err != nil {
		t.Fatal(err)
	}
	// Published in its envelope: the id, then the payload.
	msg, err := sub.ReceiveMessage(ctx)
	if err != nil || msg.Payload != Envelope(id, `{"x":1}`) || msg.Payload != "#"+id+` {"x":1}` {
		t.Fatalf("published %v %v", msg, err)
	}
	gotID, payload, ok := OpenEnvelope(msg.Payload)
	if !ok || gotID != id || payload != `{"x":1}` {
		t.Fatalf("OpenEnvelope(%q) = %q %q %v", msg.Payload, gotID, payload, ok)
	}
	// An instance that records it with the script finds it.
	in := &instance{rdb: rdb}
	got := in.record(t, "carol", payload)[0]
	if got.ID != id || got.Appended {
		t.Fatalf("instance got %+v, want %s found", got, id)
	}
	if _, err := pub.Publish(ctx, "carol", []byte(`{"x":`)); err != ErrInvalidPayload {
		t.Fatalf("invalid JSON: %v", err)
	}
	if _, err := pub.Publish(ctx, "ca:rol", []byte(`{}`)); err == nil {
		t.Fatal("a username with ':' was accepted")
	}
}

func TestAnInstanceRecordingOutOfOrderNeitherDuplicatesNorLoses(t *testing.T) {
	rdb := client(t)
	ctx := context.Background()
	pub := NewPublisher(rdb, Retention{})
	a, b := &instance{rdb: rdb}, &instance{rdb: rdb}
	a.record(t, "dan", `{"n":0}`)
	b.record(t, "dan", `{"n":0}`)
	// P is published plainly and nobody has recorded it yet when Q is
	// published with its history entry: the history reads Q, P.
	qid, err := pub.Publish(ctx, "dan", []byte(`{"n":"q"}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []*instance{a, b} {
		got := in.record(t, "dan", `{"n":"p"}`, `{"n":"q"}`, `{"n":"r"}`)
		if got[1].ID != qid {
			t.Fatalf("q got %s, want %s", got[1].ID, qid)
		}
	}
	if n := streamLen(t, rdb, "dan"); n != 4 {
		t.Fatalf("stream holds %d entries, want 4", n)
	}
}

func TestAnInstanceWithoutCursorFindsWhatOthersRecorded(t *testing.T) {
	rdb := client(t)
	a := &instance{rdb: rdb}
	a.record(t, "erin", `{"n":1}`, `{"n":2}`)
	late := subscribed(t, rdb) // started after {"n":2}
	got := a.record(t, "erin", `{"n":3}`)[0]
	if r := late.record(t, "erin", `{"n":3}`)[0]; r.ID != got.ID || r.Appended {
		t.Fatalf("late instance got %+v, want %s found", r, got.ID)
	}
	if r := late.record(t, "erin", `{"n":4}`)[0]; !r.Appended {
		t.Fatalf("late instance did not record a new event: %+v", r)
	}
	if n := streamLen(t, rdb, "erin"); n != 4 {
		t.Fatalf("stream holds %d entries, want 4", n)
	}
}

func TestRetentionTrimsAndExpires(t *testing.T) {
	rdb := client(t)
	ctx := context.Background()
	pub := NewPublisher(rdb, Retention{MaxLen: 10, TTL: 2 * time.Second})
	for i := range 500 {
		if _, err := pub.Publish(ctx, "fay", fmt.Appendf(nil, `{"n":%d}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	// MAXLEN ~ trims whole nodes: at least 10 kept, far fewer than 500.
	if n := streamLen(t, rdb, "fay"); n < 10 || n > 200 {
		t.Fatalf("stream holds %d entries after 500 with MaxLen 10", n)
	}
	ttl, err := rdb.PTTL(ctx, HistoryKey("fay")).Result()
	if err != nil || ttl <= 0 || ttl > 2*time.Second {
		t.Fatalf("ttl %v %v", ttl, err)
	}
}

func TestParseID(t *testing.T) {
	for _, s := range []string{"", "1", "a-1", "1-b", "-1", "1-"} {
		if _, ok := ParseID(s); ok {
			t.Errorf("ParseID(%q) ok", s)
		}
	}
	a, _ := ParseID("1733-5")
	b, _ := ParseID("1733-12")
	if !a.Less(b) || b.Less(a) || a.String() != "1733-5" {
		t.Fatal("order")
	}
}

func TestAnInstanceJoiningABusyUserOrABurstFindsEveryEvent(t *testing.T) {
	rdb := client(t)
	a := &instance{rdb: rdb}
	for i := range 300 {
		a.record(t, "gus", fmt.Sprintf(`{"n":%d}`, i))
	}
	late := subscribed(t, rdb)
	// 300 more are published between the new instance's clock reading
	// and its subscription: it never sees them.
	for i := range 300 {
		a.record(t, "gus", fmt.Sprintf(`{"unseen":%d}`, i))
	}
	// a is far ahead: it has recorded a burst of 200, identical payloads
	// among them, when the new instance sees the first.
	var burst []string
	for i := range 200 {
		burst = append(burst, fmt.Sprintf(`{"m":%d}`, i/3))
	}
	ahead := a.record(t, "gus", burst...)
	got := late.record(t, "gus", burst...)
	for i := range burst {
		if got[i].ID != ahead[i].ID || got[i].Appended {
			t.Fatalf("burst event %d: late instance got %+v, a %+v", i, got[i], ahead[i])
		}
	}
	if n := streamLen(t, rdb, "gus"); n != 800 {
		t.Fatalf("stream holds %d entries, want 800", n)
	}
}

// The one exception (RecordSource): an entry appended late, after a new
// instance's horizon, for an event published before it subscribed, and
// byte-identical to the first event the instance sees for that user.
func TestTheDocumentedExceptionALateEntryIdenticalToANewInstancesFirstEvent(t *testing.T) {
	rdb := client(t)
	a := &instance{rdb: rdb}
	a.record(t, "hal", `{"n":0}`)
	// The first {"same":1} is published, then the new instance
	// subscribes, then a (lagging) appends the first, then the second
	// is published.
	late := subscribed(t, rdb)
	time.Sleep(2 * time.Millisecond)
	first := a.record(t, "hal", `{"same":1}`)[0]
	merged := late.record(t, "hal", `{"same":1}`)[0]
	second := a.record(t, "hal", `{"same":1}`)[0]
	if merged.ID != first.ID || second.ID == first.ID || !second.Appended {
		t.Fatalf("first %+v, late instance %+v, second %+v", first, merged, second)
	}
	// From its next event on, the late instance agrees again.
	next := a.record(t, "hal", `{"n":2}`)[0]
	if r := late.record(t, "hal", `{"n":2}`)[0]; r.ID != next.ID {
		t.Fatalf("late instance got %s, want %s", r.ID, next.ID)
	}
	// Without the late entry, identical first events are told apart.
	b := subscribed(t, rdb)
	c := &instance{rdb: rdb, cur: b.cur}
	one := b.record(t, "hal", `{"x":1}`, `{"x":1}`)
	two := c.record(t, "hal", `{"x":1}`, `{"x":1}`)
	if one[0].ID == one[1].ID || one[0].ID != two[0].ID || one[1].ID != two[1].ID {
		t.Fatalf("b got %+v, c %+v", one, two)
	}
}

func TestAnInstanceLaggingMoreThanTheRetentionAppendsNothing(t *testing.T) {
	rdb := client(t)
	small := Retention{MaxLen: 10}
	a, b := &instance{rdb: rdb, retention: small}, &instance{rdb: rdb, retention: small}
	a.record(t, "ivy", `{"n":0}`)
	b.record(t, "ivy", `{"n":0}`)
	var payloads []string
	for i := 1; i <= 500; i++ {
		payloads = append(payloads, fmt.Sprintf(`{"n":%d}`, i))
	}
	var ids []string
	for _, p := range payloads {
		ids = append(ids, a.record(t, "ivy", p)[0].ID)
	}
	before, err := After(context.Background(), rdb, "ivy", "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	// b is 500 events behind, with 10 (and a little more) retained.
	got := b.record(t, "ivy", payloads...)
	for i, r := range got {
		if r.Appended {
			t.Fatalf("event %d appended again by the lagging instance", i+1)
		}
		if r.ID != "" && r.ID != ids[i] {
			t.Fatalf("event %d: lagging instance got %s, want %s or none", i+1, r.ID, ids[i])
		}
	}
	if got[len(got)-1].ID != ids[len(ids)-1] {
		t.Fatal("the lagging instance did not catch up on the retained events")
	}
	after, _ := After(context.Background(), rdb, "ivy", "", 1000)
	if len(after) != len(before) {
		t.Fatalf("history went from %d to %d entries", len(before), len(after))
	}
	// Caught up: the next event is recorded once.
	next := a.record(t, "ivy", `{"n":501}`)[0]
	if r := b.record(t, "ivy", `{"n":501}`)[0]; r.ID != next.ID || r.Appended {
		t.Fatalf("after catching up b got %+v, want %s found", r, next.ID)
	}
}

// TestAnInstanceWaitingForItsFirstEventNeverAppendsAheadOfEarlierOnes is
// user mode's case: an instance subscribes to a user's channel while the
// lease holder (subscribed all along) has not recorded yet the events
// published just before the instance's first one. Appending that first
// event would put it ahead of them.
func TestAnInstanceWaitingForItsFirstEventNeverAppendsAheadOfEarlierOnes(t *testing.T) {
	rdb := client(t)
	holder := &instance{rdb: rdb}
	holder.record(t, "fay", `{"n":1}`)
	late := subscribed(t, rdb)
	late.cur.WaitFirst = true
	// {"n":2} was published before late's subscription, {"n":3} and
	// {"n":4} after; the holder has recorded none of them yet.
	for _, r := range late.record(t, "fay", `{"n":3}`, `{"n":4}`) {
		if !r.Pending || r.ID != "" || r.Appended {
			t.Fatalf("late instance got %+v, want pending", r)
		}
	}
	if n := streamLen(t, rdb, "fay"); n != 1 {
		t.Fatalf("stream holds %d entries, want 1: nothing appended while waiting", n)
	}
	want := holder.record(t, "fay", `{"n":2}`, `{"n":3}`)
	// Offered again: the first is found, and the next, which nobody
	// recorded, is appended after it.
	late.cur.WaitFirst = true
	got := late.record(t, "fay", `{"n":3}`, `{"n":4}`)
	if got[0].ID != want[1].ID || got[0].Appended || got[0].Pending {
		t.Fatalf("first event %+v, want %s found", got[0], want[1].ID)
	}
	if !got[1].Appended || got[1].Pending {
		t.Fatalf("second event %+v, want appended", got[1])
	}
	if !late.cur.Entry {
		t.Fatal("cursor is still a horizon after a found event")
	}
	if r := holder.record(t, "fay", `{"n":4}`)[0]; r.ID != got[1].ID || r.Appended {
		t.Fatalf("holder got %+v for {\"n\":4}, want %s found", r, got[1].ID)
	}
	entries, err := rdb.XRange(context.Background(), HistoryKey("fay"), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range entries {
		if want := fmt.Sprintf(`{"n":%d}`, i+1); e.Values["d"] != want {
			t.Fatalf("entry %d is %v, want %s", i, e.Values["d"], want)
		}
	}
	if len(entries) != 4 {
		t.Fatalf("%d entries, want 4", len(entries))
	}
}
