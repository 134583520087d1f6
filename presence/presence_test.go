package presence

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/internal/testproc"
)

// transitions subscribes to channel and returns a function that waits
// up to d for the next transition, or returns nil when none came.
func transitions(t *testing.T, rdb *redis.Client, channel string) func(d time.Duration) map[string]any {
	t.Helper()
	ps := rdb.Subscribe(t.Context(), channel)
	if _, err := ps.Receive(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ps.Close() })
	ch := ps.Channel()
	return func(d time.Duration) map[string]any {
		t.Helper()
		select {
		case m := <-ch:
			var v map[string]any
			if err := json.Unmarshal([]byte(m.Payload), &v); err != nil {
				t.Fatalf("transition %q: %v", m.Payload, err)
			}
			return v
		case <-time.After(d):
			return nil
		}
	}
}

func instance(id string) *Instance {
	return &Instance{ID: id, TTL: 2 * time.Second, Interval: 500 * time.Millisecond, Grace: time.Second, Channel: DefaultChannel}
}

func tick(t *testing.T, rdb *redis.Client, in *Instance, leaving bool, updates ...Update) int {
	t.Helper()
	n, err := in.Tick(context.Background(), rdb, updates, leaving)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func want(t *testing.T, got map[string]any, user string, online bool) {
	t.Helper()
	if got == nil || got["username"] != user || got["online"] != online {
		t.Fatalf("transition %v, want %s online=%v", got, user, online)
	}
}

func TestPresenceAcrossInstancesAnnouncesEachTransitionOnce(t *testing.T) {
	t.Parallel()
	rdb := testproc.StartRedis(t).Client()
	if _, err := Query(t.Context(), rdb, "alice"); !errors.Is(err, ErrNeverWritten) {
		t.Fatalf("before any instance: %v, want ErrNeverWritten", err)
	}
	next := transitions(t, rdb, DefaultChannel)
	a, b := instance("a"), instance("b")
	tick(t, rdb, a, false)
	if st, err := Query(t.Context(), rdb, "alice"); err != nil || st[0] != (Status{Username: "alice"}) {
		t.Fatalf("nobody connected: %v %v", st, err)
	}

	// First connection anywhere: one online.
	if n := tick(t, rdb, a, false, Update{"alice", 1}); n != 1 {
		t.Fatalf("published %d, want 1", n)
	}
	want(t, next(time.Second), "alice", true)
	// A second connection on another instance: counted, nothing published.
	tick(t, rdb, b, false, Update{"alice", 2})
	if st, _ := Query(t.Context(), rdb, "alice", "bob"); st[0] != (Status{"alice", true, 3}) || st[1] != (Status{"bob", false, 0}) {
		t.Fatalf("query %v", st)
	}
	// alice leaves a, stays on b; then leaves b and comes back on a within
	// the grace (a reload): nothing published.
	tick(t, rdb, a, false, Update{"alice", 0})
	tick(t, rdb, b, false, Update{"alice", 0})
	time.Sleep(500 * time.Millisecond)
	tick(t, rdb, a, false, Update{"alice", 1})
	time.Sleep(time.Second)
	tick(t, rdb, a, false)
	tick(t, rdb, b, false)
	if m := next(200 * time.Millisecond); m != nil {
		t.Fatalf("a reload within the grace published %v", m)
	}
	// Gone everywhere: offline once the grace is over, from whichever
	// instance ticks first, and only once.
	tick(t, rdb, a, false, Update{"alice", 0})
	time.Sleep(1100 * time.Millisecond)
	published := tick(t, rdb, b, false) + tick(t, rdb, a, false)
	if published != 1 {
		t.Fatalf("published %d after the grace, want 1", published)
	}
	want(t, next(time.Second), "alice", false)
	if m := next(200 * time.Millisecond); m != nil {
		t.Fatalf("published again: %v", m)
	}
}

func TestADeadInstancesUsersGoOfflineWithinTTLPlusGrace(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out an instance's TTL and a grace period")
	}
	t.Parallel()
	rdb := testproc.StartRedis(t).Client()
	next := transitions(t, rdb, DefaultChannel)
	dead, live := instance("dead"), instance("live")
	tick(t, rdb, dead, false, Update{"carol", 1}, Update{"dave", 1})
	tick(t, rdb, live, false, Update{"dave", 1})
	died := time.Now()
	got := map[string]bool{}
	for range 2 {
		m := next(time.Second)
		got[m["username"].(string)] = m["online"].(bool)
	}
	if !got["carol"] || !got["dave"] {
		t.Fatalf("online: %v", got)
	}
	// Only live ticks from now on.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(live.Interval)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				_, _ = live.Tick(context.Background(), rdb, nil, false)
			}
		}
	}()
	defer func() { close(stop); <-done }()
	m := next(live.TTL + live.Grace + 2*time.Second)
	want(t, m, "carol", false)
	if took := time.Since(died); took > live.TTL+live.Grace+live.Interval {
		t.Errorf("carol offline %v after her instance died, want within TTL + grace (%v)", took, live.TTL+live.Grace)
	}
	// dave is still connected on live: counted there, not announced.
	if m := next(time.Second); m != nil {
		t.Fatalf("published %v", m)
	}
	if st, _ := Query(t.Context(), rdb, "carol", "dave"); st[0].Online || st[1] != (Status{"dave", true, 1}) {
		t.Fatalf("query %v", st)
	}
}

func TestALeavingInstanceHandsItsUsersTheGrace(t *testing.T) {
	t.Parallel()
	rdb := testproc.StartRedis(t).Client()
	next := transitions(t, rdb, DefaultChannel)
	old, fresh := instance("old"), instance("new")
	tick(t, rdb, old, false, Update{"erin", 1}, Update{"frank", 1})
	next(time.Second)
	next(time.Second)
	// A rolling restart: old leaves, erin comes back on new within the
	// grace, frank does not.
	tick(t, rdb, old, true)
	tick(t, rdb, fresh, false, Update{"erin", 1})
	time.Sleep(old.Grace + 100*time.Millisecond)
	tick(t, rdb, fresh, false)
	want(t, next(time.Second), "frank", false)
	if m := next(200 * time.Millisecond); m != nil {
		t.Fatalf("published %v", m)
	}
	if n, _ := rdb.Exists(t.Context(), InstancePrefix+"old").Result(); n != 0 {
		t.Fatal("the leaving instance's users are still in Redis")
	}
}

func TestPresenceWorksOnARedisCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("a Redis Cluster takes seconds to start")
	}
	c := testproc.StartCluster(t)
	cc := c.Client()
	ps := cc.Subscribe(t.Context(), DefaultChannel)
	defer ps.Close()
	if _, err := ps.Receive(t.Context()); err != nil {
		t.Fatal(err)
	}
	in := instance("a")
	if _, err := in.Tick(t.Context(), cc, []Update{{"alice", 2}}, false); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-ps.Channel():
		if m.Payload != `{"username":"alice","online":true}` {
			t.Fatalf("transition %q", m.Payload)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no transition on the cluster")
	}
	st, err := Query(t.Context(), cc, "alice", "bob")
	if err != nil || st[0] != (Status{"alice", true, 2}) || st[1].Online {
		t.Fatalf("query on the cluster: %+v %v", st, err)
	}
}
