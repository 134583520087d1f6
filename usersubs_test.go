package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"fanout/history"
)

// userModeEnv is the environment of the user-mode tests.
func userModeEnv(extra map[string]string) map[string]string {
	env := map[string]string{"SUBSCRIBE_MODE": "user", "LOG_LEVEL": "info"}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// userChannelsOf returns the user channels Redis holds subscriptions for,
// sorted, with their subscriber counts (PUBSUB CHANNELS, PUBSUB NUMSUB).
func userChannelsOf(t *testing.T, rdb *redis.Client) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	chans, err := rdb.PubSubChannels(ctx, channelPrefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	chans = slices.DeleteFunc(chans, func(c string) bool { return userOf(c) == "" })
	if len(chans) == 0 {
		return map[string]int64{}
	}
	counts, err := rdb.PubSubNumSub(ctx, chans...).Result()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]int64, len(counts))
	for c, n := range counts {
		out[userOf(c)] = n
	}
	return out
}

// redisClients returns CLIENT LIST as one map of fields per connection.
func redisClients(t *testing.T, rdb *redis.Client) []map[string]string {
	t.Helper()
	list, err := rdb.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	var clients []map[string]string
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		fields := map[string]string{}
		for _, f := range strings.Fields(line) {
			if k, v, ok := strings.Cut(f, "="); ok {
				fields[k] = v
			}
		}
		clients = append(clients, fields)
	}
	return clients
}

// commandCalls returns how many times Redis ran cmd (INFO commandstats).
func commandCalls(t *testing.T, rdb *redis.Client, cmd string) int {
	t.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_"+cmd+":calls="); ok {
			n, _ := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
			return n
		}
	}
	return 0
}

// leaseHolders returns the indexes of the daemons holding the recorder lease.
func leaseHolders(daemons []*testDaemon) []int {
	var held []int
	for i, td := range daemons {
		if td.d.sub.status().recorderLease {
			held = append(held, i)
		}
	}
	return held
}

func TestUserModeEachInstanceSubscribesToItsConnectedUsersOnly(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	rdb := r.client()
	daemons, _ := startInstances(t, r, 3, userModeEnv(nil))
	eventually(t, 5*time.Second, "one instance holds the recorder lease", func() bool { return len(leaseHolders(daemons)) == 1 })

	// Nine users, three on each instance; u0 has two connections.
	const users, events = 9, 30
	conns := map[string][]*websocket.Conn{}
	for i := range users {
		u := fmt.Sprintf("u%d", i)
		conns[u] = append(conns[u], daemons[i%3].dial(u))
	}
	conns["u0"] = append(conns["u0"], daemons[0].dial("u0"))

	// What Redis says each instance reads: every user's channel has exactly
	// one subscriber, and each instance's subscription connection holds its
	// probe channel and its three users' channels.
	subs := userChannelsOf(t, rdb)
	if len(subs) != users {
		t.Fatalf("PUBSUB CHANNELS has %d user channels (%v), want %d", len(subs), subs, users)
	}
	for u, n := range subs {
		if n != 1 {
			t.Fatalf("PUBSUB NUMSUB %s = %d, want 1: only the instance it is connected to", u, n)
		}
	}
	patterns := 0
	for _, td := range daemons {
		name := "fanout-" + td.d.id
		found := false
		for _, c := range redisClients(t, rdb) {
			if c["name"] == name && c["sub"] != "0" {
				found = true
				if c["sub"] != "4" || c["psub"] != "0" {
					t.Fatalf("CLIENT LIST for %s: sub=%s psub=%s, want sub=4 (probe + 3 users) psub=0", name, c["sub"], c["psub"])
				}
			}
			if c["name"] == name && c["psub"] == "1" {
				patterns++
			}
		}
		if !found {
			t.Fatalf("no subscription connection named %s in CLIENT LIST", name)
		}
		if got := adminStats(t, td).Subscription; got.Mode != "user" || got.Channels != 3 {
			t.Fatalf("/admin/stats subscription = %+v, want mode user with 3 channels", got)
		}
	}
	// The lease holder's recording subscription is the one pattern.
	if patterns != 1 {
		t.Fatalf("%d pattern subscriptions, want 1 (the recorder lease holder's)", patterns)
	}

	// Each client gets exactly its user's events; each instance reads only
	// its users' events from Redis.
	pub := r.client()
	for n := range events {
		for i := range users {
			u := fmt.Sprintf("u%d", i)
			if err := pub.Publish(context.Background(), channelPrefix+u, event(u, n)).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	for u, cs := range conns {
		for _, c := range cs {
			for n := range events {
				var got struct {
					Username string `json:"username"`
					Counter  int    `json:"counter"`
				}
				if err := readJSON(c, &got); err != nil || got.Username != u || got.Counter != n {
					t.Fatalf("%s got %+v (%v), want its event %d", u, got, err, n)
				}
			}
		}
	}
	for i, td := range daemons {
		eventually(t, 5*time.Second, "instance counted its events", func() bool {
			return td.d.stats.MessagesReceived.Load() == 3*events
		})
		if got := td.d.stats.MessagesReceived.Load(); got != 3*events {
			t.Fatalf("instance %d received %d events from Redis, want %d (its 3 users' only)", i, got, 3*events)
		}
	}
	holder := daemons[leaseHolders(daemons)[0]]
	eventually(t, 5*time.Second, "the lease holder recorded every event", func() bool {
		return adminStats(t, holder).Subscription.RecorderReceived == users*events
	})
	// Every event is in its user's history once, under the id delivered.
	for i := range users {
		u := fmt.Sprintf("u%d", i)
		if entries := streamEntries(t, rdb, u); len(entries) != events {
			t.Fatalf("history of %s has %d entries, want %d", u, len(entries), events)
		}
	}
}

// readJSON reads the next text frame within 5s into v.
func readJSON(conn *websocket.Conn, v any) error {
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	return conn.ReadJSON(v)
}

// TestAnEventPublishedAsSoonAsTheConnectionIsOpenReachesIt publishes the
// moment the client sees its connection open (the 101, or /events'
// response headers) and expects the event, in both subscription modes and
// over both transports. With history off nothing replays: a user mode
// connection must start only once its channel is subscribed, and in both
// modes it must be in the hub before the client learns it is open.
func TestAnEventPublishedAsSoonAsTheConnectionIsOpenReachesIt(t *testing.T) {
	for _, mode := range []string{subscribePattern, subscribeUser} {
		for _, tr := range historyTransports() {
			t.Run(mode+"/"+tr.Name, func(t *testing.T) {
				r := startRedis(t)
				td := startDaemon(t, r, map[string]string{"SUBSCRIBE_MODE": mode, "HISTORY": "off", "LOG_LEVEL": "warn"})
				td.waitReady()
				pub := r.client()
				client := &http.Client{}
				defer client.CloseIdleConnections()
				const users = 100
				for i := range users {
					u := fmt.Sprintf("fresh%d", i)
					s, err := tr.Dial(t.Context(), client, td.baseURL, url.Values{"username": {u}}, "")
					if err != nil {
						t.Fatal(err)
					}
					if err := pub.Publish(context.Background(), channelPrefix+u, event(u, i)).Err(); err != nil {
						t.Fatal(err)
					}
					f, err := s.NextWithin(5 * time.Second)
					s.Close()
					if err != nil || f.Data != event(u, i) {
						t.Fatalf("%s (connection %d) got %+v, %v; want its event", u, i, f, err)
					}
				}
			})
		}
	}
}

func TestUserModeKeepsAChannelForTheGracePeriodThenUnsubscribes(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	rdb := r.client()
	td := startDaemon(t, r, userModeEnv(map[string]string{"SUBSCRIBE_GRACE": "500ms"}))
	td.waitReady()

	conn := td.dial("grace")
	if got := userChannelsOf(t, rdb)["grace"]; got != 1 {
		t.Fatalf("NUMSUB grace = %d after connecting, want 1", got)
	}
	unsubs := commandCalls(t, rdb, "unsubscribe")
	subs := commandCalls(t, rdb, "subscribe")
	// Leaving and coming back within the grace period (a page reload)
	// changes nothing in Redis.
	_ = conn.Close()
	eventually(t, 5*time.Second, "connection gone", func() bool { return td.d.hub.connectionCount("grace") == 0 })
	conn = td.dial("grace")
	time.Sleep(700 * time.Millisecond)
	if got := userChannelsOf(t, rdb)["grace"]; got != 1 {
		t.Fatalf("NUMSUB grace = %d after a reconnect within the grace period, want 1", got)
	}
	if commandCalls(t, rdb, "unsubscribe") != unsubs || commandCalls(t, rdb, "subscribe") != subs {
		t.Fatal("a reconnect within the grace period sent SUBSCRIBE or UNSUBSCRIBE")
	}
	// Once the last connection has been gone for the grace period, the
	// channel is unsubscribed.
	_ = conn.Close()
	left := time.Now()
	eventually(t, 5*time.Second, "channel unsubscribed", func() bool { return userChannelsOf(t, rdb)["grace"] == 0 })
	if waited := time.Since(left); waited < 500*time.Millisecond {
		t.Fatalf("unsubscribed %v after the last connection left, before the 500ms grace period", waited)
	}
	if n := td.d.sub.status().channels; n != 0 {
		t.Fatalf("instance counts %d channels, want 0", n)
	}
	// And subscribed again for the next connection.
	conn = td.dial("grace")
	td.publish("grace", `{"n":1}`)
	if got := readText(t, conn, 5*time.Second); got != `{"n":1}` {
		t.Fatalf("got %q", got)
	}
}

func TestUserModeUnderChurnOf10000ConnectsLosesNoEventAndEndsWithTheRightChannels(t *testing.T) {
	r := startRedis(t)
	rdb := r.client()
	daemons, _ := startInstances(t, r, 2, userModeEnv(map[string]string{"SUBSCRIBE_GRACE": "200ms", "LOG_LEVEL": "warn", "HISTORY": "off", "PROBE_TIMEOUT": "3s"}))

	// Stable users, one connection each, receiving throughout.
	const stable = 20
	conns := make([]*websocket.Conn, stable)
	for i := range stable {
		conns[i] = daemons[i%2].dial(fmt.Sprintf("stable%d", i))
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var published atomic.Int64
	var pubWG sync.WaitGroup
	pubWG.Go(func() {
		pub := r.client()
		for n := 0; ctx.Err() == nil && n < 100000; n++ {
			for i := range stable {
				u := fmt.Sprintf("stable%d", i)
				if err := pub.Publish(ctx, channelPrefix+u, event(u, n)).Err(); err != nil {
					return
				}
			}
			published.Store(int64(n + 1))
			time.Sleep(20 * time.Millisecond)
		}
	})

	// 10 000 connects and disconnects of 2 500 other users, 64 at a time.
	const churn, churnUsers, workers = 10000, 2500, 64
	subsBefore := commandCalls(t, rdb, "subscribe")
	start := time.Now()
	var next, refused atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= churn || time.Since(start) > time.Minute {
					return
				}
				u := fmt.Sprintf("churn%d", i%churnUsers)
				c, resp, err := websocket.DefaultDialer.Dial(daemons[(int(i)+w)%2].wsURL+"?username="+u, nil)
				if err != nil {
					if resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
						t.Errorf("churn dial %s: %v", u, err)
					}
					refused.Add(1)
					continue
				}
				_ = c.Close()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	subCmds := commandCalls(t, rdb, "subscribe") - subsBefore
	t.Logf("%d connects and disconnects in %v (%.0f/s), %d SUBSCRIBE commands, %d refused", churn, elapsed.Round(time.Millisecond),
		churn/elapsed.Seconds(), subCmds, refused.Load())
	if n := next.Load(); n < churn {
		t.Fatalf("only %d connects within a minute", n)
	}
	if refused.Load() != 0 {
		t.Fatalf("%d connections refused", refused.Load())
	}
	// Batched: far fewer SUBSCRIBE commands than channels subscribed.
	var commands, channels uint64
	for _, td := range daemons {
		c, n := td.d.sub.(*userSubscription).users.batching()
		commands, channels = commands+c, channels+n
	}
	t.Logf("%d channels subscribed in %d SUBSCRIBE commands (Redis counted %d)", channels, commands, subCmds)
	if channels < 2*commands {
		t.Fatalf("%d channels subscribed in %d SUBSCRIBE commands, want 2 or more a command on average", channels, commands)
	}

	// After the grace period only the stable users' channels are left.
	eventually(t, 10*time.Second, "churned channels unsubscribed", func() bool {
		return len(userChannelsOf(t, rdb)) == stable
	})
	for u, n := range userChannelsOf(t, rdb) {
		if !strings.HasPrefix(u, "stable") || n != 1 {
			t.Fatalf("channel %s has %d subscribers after the churn", u, n)
		}
	}
	cancel()
	pubWG.Wait()
	// No stable client lost or doubled an event.
	total := int(published.Load())
	for i, conn := range conns {
		u := fmt.Sprintf("stable%d", i)
		for n := range total {
			if got := readText(t, conn, 5*time.Second); got != event(u, n) {
				t.Fatalf("%s: event %d is %q, want %q", u, n, got, event(u, n))
			}
		}
	}
}

func TestUserModeSubscribesEveryChannelAgainAfterARedisRestart(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	daemons, _ := startInstances(t, r, 2, userModeEnv(nil))
	var conns []*websocket.Conn
	for i := range 6 {
		conns = append(conns, daemons[i%2].dial(fmt.Sprintf("r%d", i)))
	}
	r.kill()
	r.start()
	rdb := r.client()
	eventually(t, 15*time.Second, "every channel subscribed again", func() bool {
		subs := userChannelsOf(t, rdb)
		if len(subs) != 6 {
			return false
		}
		for _, n := range subs {
			if n != 1 {
				return false
			}
		}
		return true
	})
	for _, td := range daemons {
		td.waitReady()
	}
	for i, conn := range conns {
		u := fmt.Sprintf("r%d", i)
		if err := rdb.Publish(context.Background(), channelPrefix+u, event(u, 1)).Err(); err != nil {
			t.Fatal(err)
		}
		if got := readText(t, conn, 5*time.Second); got != event(u, 1) {
			t.Fatalf("%s got %q after the restart", u, got)
		}
	}
	eventually(t, 10*time.Second, "a recorder lease holder again", func() bool { return len(leaseHolders(daemons)) == 1 })
}

// TestUserModeRecorderLeaseIsTakenOverWhenItsHolderStops publishes to a
// user connected nowhere, so that only the lease holder's recording
// subscription reads the events, and stops the holder mid-way: another
// instance takes the lease over and the history has every event once.
func TestUserModeRecorderLeaseIsTakenOverWhenItsHolderStops(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	rdb := r.client()
	daemons, _ := startInstances(t, r, 3, userModeEnv(map[string]string{"HISTORY_MAX_LEN": "20000"}))
	eventually(t, 5*time.Second, "one instance holds the recorder lease", func() bool { return len(leaseHolders(daemons)) == 1 })
	holder := leaseHolders(daemons)[0]

	const total = 1500
	payloads := numbered("nobody", total)
	stopped := make(chan time.Time, 1)
	ctx := t.Context()
	err := publishSteadily(ctx, payloads, 5, 10*time.Millisecond, plainPublish(rdb, "nobody"), func(sent int) {
		if sent == total/3 {
			go func() {
				_ = daemons[holder].stop()
				stopped <- time.Now()
			}()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	var others []*testDaemon
	for i, td := range daemons {
		if i != holder {
			others = append(others, td)
		}
	}
	if len(leaseHolders(others)) != 1 {
		t.Fatalf("%d of the remaining instances hold the lease, want 1", len(leaseHolders(others)))
	}
	<-stopped
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if n, err := rdb.XLen(ctx, history.HistoryKey("nobody")).Result(); err == nil && n >= total {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	entries := streamEntries(t, rdb, "nobody")
	if len(entries) != total {
		seen := map[string]bool{}
		for _, e := range entries {
			seen[e.Data] = true
		}
		var missing []int
		for i, p := range payloads {
			if !seen[p] {
				missing = append(missing, i)
			}
		}
		t.Logf("missing %d: %v", len(missing), missing[:min(len(missing), 20)])
	}
	if len(entries) != total {
		t.Fatalf("history has %d entries, want %d", len(entries), total)
	}
	for i, e := range entries {
		if e.Data != payloads[i] {
			t.Fatalf("history entry %d is %s, want %s", i, e.Data, payloads[i])
		}
	}
}

// TestUserModeAResumeWaitsForTheLeaseHolderToRecordWhatWasPublishedBefore
// resumes a client on an instance that subscribes to its user's channel
// only then, while the lease holder has yet to record an event published
// just before: the catch-up must wait for it (the subscription marker and
// its answer), or the event is in neither the replay nor the live stream.
func TestUserModeAResumeWaitsForTheLeaseHolderToRecordWhatWasPublishedBefore(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	rdb := r.client()
	daemons, bases := startInstances(t, r, 2, userModeEnv(nil))
	eventually(t, 5*time.Second, "one instance holds the recorder lease", func() bool { return len(leaseHolders(daemons)) == 1 })
	holder := daemons[leaseHolders(daemons)[0]]
	other := bases[1-leaseHolders(daemons)[0]]
	ctx := t.Context()

	if err := rdb.Publish(ctx, channelPrefix+"late", `{"n":0}`).Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the first event recorded", func() bool { return len(streamEntries(t, rdb, "late")) == 1 })
	first := streamEntries(t, rdb, "late")[0].ID

	// The lease holder falls behind: {"n":1} is published, read, and not
	// recorded yet when the client resumes on the other instance.
	stall := make(chan struct{})
	holder.d.sub.(*userSubscription).lease.rec.rec.stall.Store(&stall)
	if err := rdb.Publish(ctx, channelPrefix+"late", `{"n":1}`).Err(); err != nil {
		t.Fatal(err)
	}
	release := time.AfterFunc(300*time.Millisecond, func() { close(stall) })
	defer release.Stop()
	s, err := dialHistoryWS(ctx, nil, other, url.Values{"username": {"late"}, "last_event_id": {first}}, "")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := rdb.Publish(ctx, channelPrefix+"late", `{"n":2}`).Err(); err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= 2; n++ {
		f, err := s.NextWithin(5 * time.Second)
		if err != nil || f.Data != fmt.Sprintf(`{"n":%d}`, n) || f.ID == "" {
			t.Fatalf("event %d: got %+v, %v", n, f, err)
		}
	}
}
