package e2e

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"fanout/history"
	"fanout/internal/testproc"
)

// clusterUsers returns n usernames whose channels' slots are spread over
// every master of c, at least min of them on each.
func clusterUsers(t *testing.T, c *testproc.Cluster, n, least int) []string {
	t.Helper()
	users := make([]string, n)
	perMaster := make(map[string]int)
	for i := range users {
		users[i] = fmt.Sprintf("user-%02d", i)
		perMaster[c.MasterFor("workflow:events:"+users[i])]++
	}
	if len(perMaster) != 3 {
		t.Fatalf("users on %d masters, want 3: %v", len(perMaster), perMaster)
	}
	for m, k := range perMaster {
		if k < least {
			t.Fatalf("only %d users on master %s", k, m)
		}
	}
	return users
}

// shardChannels returns the shard channels each master holds subscribers
// for (PUBSUB SHARDCHANNELS), by master address.
func shardChannels(t *testing.T, cc *redis.ClusterClient) map[string][]string {
	t.Helper()
	var mu sync.Mutex
	out := make(map[string][]string)
	err := cc.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error {
		chans, err := m.Do(ctx, "PUBSUB", "SHARDCHANNELS", "workflow:events:"+"*").StringSlice()
		if err != nil {
			return err
		}
		slices.Sort(chans)
		mu.Lock()
		out[m.Options().Addr] = chans
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatalf("PUBSUB SHARDCHANNELS: %v", err)
	}
	return out
}

// expectShardChannels waits until each master holds the shard channels
// of exactly the users of its slots (as c sees the slot map now).
func expectShardChannels(t *testing.T, c *testproc.Cluster, cc *redis.ClusterClient, users []string) {
	t.Helper()
	var got, want map[string][]string
	testproc.WaitFor(t, 15*time.Second, "each master holding its users' shard channels", func() string {
		want = make(map[string][]string)
		for _, u := range users {
			m := c.MasterFor("workflow:events:" + u)
			want[m] = append(want[m], "workflow:events:"+u)
		}
		for _, v := range want {
			slices.Sort(v)
		}
		got = shardChannels(t, cc)
		for m, v := range got {
			if len(v) == 0 {
				delete(got, m)
			}
		}
		if !maps.EqualFunc(got, want, slices.Equal[[]string]) {
			return fmt.Sprintf("shard channels per master:\n got %v\nwant %v", got, want)
		}
		return ""
	})
}

// TestClusterShardedSubscriptionsFollowFailoverAndReshardAndLoseNothing is
// issue 13's Redis Cluster acceptance with sharded pub/sub: 3 masters and
// 3 replicas; two instances with PUBSUB_SHARDED; users spread over every
// master; the publisher is the project's, with SPUBLISH. Each master
// holds exactly its own users' channels; a plain PUBLISH reaches no one;
// a master is killed (the only seed the instances were given), its
// replica takes over and the instances subscribe its users' channels there
// on their own; slots are resharded while events flow, without a
// subscription lost; clients that resume get every event the cluster
// holds.
func TestClusterShardedSubscriptionsFollowFailoverAndReshardAndLoseNothing(t *testing.T) {
	skipShort(t)
	t.Parallel()
	c := testproc.StartCluster(t)
	cc := c.Client()
	users := clusterUsers(t, c, 24, 4)
	// The victim is the master of the watcher's slot, and the only seed.
	const watcher = "gap-watch"
	victim := c.MasterFor("workflow:events:" + watcher)
	env := map[string]string{
		"REDIS_CLUSTER_ADDRS": victim,
		"SUBSCRIBE_MODE":      "user",
		"PUBSUB_SHARDED":      "true",
		"LOG_LEVEL":           "info",
	}
	daemons, bases := startTestDaemons(t, redisAddrServer(t, victim), 2, env)
	sharded := history.Layout{Sharded: true}
	hp := history.NewPublisher(cc, history.Retention{})
	hp.Layout = sharded
	pub := newSteadyPublisher(hp, append(slices.Clone(users), watcher), 10*time.Millisecond)
	pub.watch = watcher
	gw := watchGaps(t, daemons, watcher)
	clients := startResumingClients(t, users, bases)
	for u, rc := range clients {
		rc.diagnose = diagnoseShards(daemons, u)
	}
	expectShardChannels(t, c, cc, append(slices.Clone(users), watcher))

	// A plain PUBLISH does not reach a sharded subscriber.
	plain := dialWS(t, daemons[0].wsURL+"?username="+users[0], nil)
	if err := cc.Publish(context.Background(), "workflow:events:"+users[0], `{"plain":true}`).Err(); err != nil {
		t.Fatal(err)
	}
	_ = plain.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if _, msg, err := plain.ReadMessage(); err == nil {
		t.Fatalf("a plain PUBLISH reached a sharded subscriber: %s", msg)
	}
	_ = plain.Close()

	ctx, stopPublishing := publishUntilFlowing(t, pub, clients)
	defer stopPublishing()
	rw := watchReady(ctx, daemons)

	// A master dies: its replica takes over its slots.
	replicas := c.ReplicasOf(victim)
	killed := time.Now()
	pub.markFailure()
	c.KillNode(victim)
	roundAtKill := pub.failedSince(t)
	// When the promoted replica holds the watcher's channel for both.
	var resubscribed time.Time
	testproc.Eventually(t, 30*time.Second, "the watcher's channel subscribed on the promoted replica", func() bool {
		for _, r := range replicas {
			reply, err := testproc.Query(r, "PUBSUB", "SHARDNUMSUB", "workflow:events:"+watcher)
			if n, ok := reply.([]any); err == nil && ok && len(n) == 2 && n[1] == int64(2) {
				resubscribed = time.Now()
				return true
			}
		}
		return false
	})
	c.WaitClusterOK(30 * time.Second)
	for _, td := range daemons {
		td.waitReady()
	}
	var gaps []time.Duration
	testproc.Eventually(t, 20*time.Second, "live events on the promoted replica's channels on every instance", func() bool {
		gaps = gw.gaps(killed, func(p string) bool { return roundOf(p) > roundAtKill })
		return !slices.Contains(gaps, -1)
	})
	_, failed, recovered := pub.stats()
	t.Logf("master %s killed: its replica's shard channels subscribed by both instances %v after; instances ready again after %v; the watcher's publishes accepted again after %v (%d publishes failed); gap from the kill to the first live event again, per instance: %v",
		victim, resubscribed.Sub(killed).Round(time.Millisecond), rw.readyAfter(killed), recovered.Round(time.Millisecond), failed, gaps)
	for i := range rw.notReady {
		if !rw.notReady[i].Load() {
			t.Errorf("instance %d: /ready never left 200 while a master was down", i)
		}
	}
	expectShardChannels(t, c, cc, append(slices.Clone(users), watcher))

	// Slots move while events flow: 200 from one master to another, then
	// the slot of one user in particular.
	segments := make(map[string]int)
	for u, rc := range clients {
		rc.mu.Lock()
		segments[u] = len(rc.segments)
		rc.mu.Unlock()
	}
	masters := slices.Sorted(maps.Keys(c.Masters()))
	if err := c.Reshard(masters[0], masters[1], 200); err != nil {
		t.Fatalf("reshard: %v", err)
	}
	mover := users[0]
	from := c.MasterFor("workflow:events:" + mover)
	to := masters[0]
	if to == from {
		to = masters[2]
	}
	if err := c.MoveSlot(history.Slot("workflow:events:"+mover), to); err != nil {
		t.Fatalf("move %s's slot: %v", mover, err)
	}
	if got := c.MasterFor("workflow:events:" + mover); got != to {
		t.Fatalf("%s's slot is on %s after the move, want %s", mover, got, to)
	}
	expectShardChannels(t, c, cc, append(slices.Clone(users), watcher))
	// No subscription lost: every client gets new events live, on the
	// connection it had before the reshard.
	after := pub.round()
	for u, rc := range clients {
		testproc.Eventually(t, 10*time.Second, u+" receiving events after the reshard", func() bool {
			rc.mu.Lock()
			defer rc.mu.Unlock()
			return len(rc.events) > 0 && roundOf(rc.events[len(rc.events)-1].Data) > after+2
		})
		rc.mu.Lock()
		reconnected := len(rc.segments) != segments[u]
		rc.mu.Unlock()
		if reconnected {
			rc.report(t)
			t.Errorf("%s: the connection ended during the reshard", u)
		}
	}
	stopPublishing()
	rw.wait()
	resumeAll(t, clients,
		func(u string) []history.Event { return historyOf(t, cc, sharded, u) },
		func(u string) map[string]bool { return pub.lostPayloads(u, historyOf(t, cc, sharded, u)) })
	for _, u := range users {
		if n, err := cc.Exists(context.Background(), history.HistoryKey(u)).Result(); err != nil || n != 0 {
			t.Fatalf("%s: the classic history key exists (%d, %v) in sharded mode", u, n, err)
		}
	}
}

// TestClusterClassicPubSubDeliversAndRecordsInPatternAndUserMode runs the
// seed's pattern mode and user mode on a Redis Cluster with plain PUBLISH
// (which every node forwards to every node) and the project's publisher:
// every user's events arrive, each once, with their ids from the history,
// whose key for a user lives in one slot.
func TestClusterClassicPubSubDeliversAndRecordsInPatternAndUserMode(t *testing.T) {
	skipShort(t)
	t.Parallel()
	c := testproc.StartCluster(t)
	cc := c.Client()
	users := clusterUsers(t, c, 12, 2)
	for _, mode := range []string{"pattern", "user"} {
		t.Run(mode, func(t *testing.T) {
			env := map[string]string{"REDIS_CLUSTER_ADDRS": strings.Join(c.Seeds(), ","), "SUBSCRIBE_MODE": mode, "LOG_LEVEL": "info"}
			daemons, _ := startTestDaemons(t, redisAddrServer(t, c.Seeds()[0]), 2, env)
			conns := make(map[string]*websocket.Conn)
			for i, u := range users {
				conns[u] = daemons[i%2].dialHistory(u)
			}
			pub := history.NewPublisher(cc, history.Retention{})
			for _, u := range users {
				// One after the other: the history holds a plain PUBLISH
				// once an instance has recorded it, so a publisher's
				// event sent right after it would be recorded ahead.
				p1 := `{"mode":"` + mode + `","user":"` + u + `","via":"PUBLISH"}`
				if err := cc.Publish(context.Background(), "workflow:events:"+u, p1).Err(); err != nil {
					t.Fatal(err)
				}
				first := readHistoryFrame(t, conns[u])
				p2 := `{"mode":"` + mode + `","user":"` + u + `","via":"publisher"}`
				id, err := pub.Publish(context.Background(), u, []byte(p2))
				if err != nil {
					t.Fatal(err)
				}
				second := readHistoryFrame(t, conns[u])
				if first.Data != p1 || second.Data != p2 || second.ID != id || first.ID == "" {
					t.Fatalf("%s got %s then %s, want %s then %s with id %s", u, first, second, p1, p2, id)
				}
				entries := historyOf(t, cc, history.Layout{}, u)
				if len(entries) < 2 || entries[len(entries)-2].ID != first.ID || entries[len(entries)-1].ID != id {
					t.Fatalf("%s's history %v, want it to end with %s, %s", u, entries, first.ID, id)
				}
			}
			for _, conn := range conns {
				_ = conn.Close()
			}
		})
	}
}

// dialHistory opens a fanout.v1 WebSocket for username and waits until the
// daemon counts it, as dial does.
func (td *testDaemon) dialHistory(username string) *websocket.Conn {
	td.t.Helper()
	before := td.connectionCount(username)
	dialer := &websocket.Dialer{Subprotocols: []string{historySubprotocol}, HandshakeTimeout: 5 * time.Second}
	conn, _, err := dialer.Dial(td.wsURL+"?username="+username, nil)
	if err != nil {
		td.t.Fatalf("dial %s as %s: %v", td.wsURL, username, err)
	}
	td.t.Cleanup(func() { _ = conn.Close() })
	testproc.Eventually(td.t, 5*time.Second, "connection registered", func() bool {
		return td.connectionCount(username) > before
	})
	return conn
}

// readHistoryFrame reads one fanout.v1 frame within 5 s.
func readHistoryFrame(t *testing.T, conn *websocket.Conn) histFrame {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, msg, err := conn.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	f, err := parseHistoryMessage(msg)
	if err != nil {
		t.Fatalf("parse %s: %v", msg, err)
	}
	return f
}

// diagnoseShards logs, for a failure, what each instance's /admin/stats
// says of its subscription and Redis.
func diagnoseShards(daemons []*testDaemon, user string) func(t *testing.T) {
	return func(t *testing.T) {
		for i, td := range daemons {
			s := td.stats()
			t.Logf("instance %d: %s's connections %d; subscription %+v; redis %+v; catch-ups %d",
				i, user, td.connectionCount(user), s.Subscription, s.Redis, s.History.Catchups)
		}
	}
}
