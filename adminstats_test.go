package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func TestAdminStatsTopUsersAreOrderedCappedAndRefreshed(t *testing.T) {
	t.Parallel()
	td := startDaemon(t, startRedis(t), map[string]string{"LOG_LEVEL": "info"})
	td.waitReady()
	var carol []*websocket.Conn
	for range 3 {
		carol = append(carol, td.dial("carol"))
	}
	td.dial("alice")
	td.dial("alice")
	td.dial("bob")
	top3 := []userConnections{{"carol", 3}, {"alice", 2}, {"bob", 1}}
	// The list is cached for a second, from whenever it was last computed.
	eventually(t, 3*time.Second, "top users carol, alice, bob", func() bool {
		return slices.Equal(adminStats(t, td).TopUsers, top3)
	})

	// 25 more users with one connection each: the list stops at 20, ties
	// in name order.
	for i := range 25 {
		td.dial(fmt.Sprintf("u%02d", i))
	}
	want := slices.Clone(top3)
	for i := range topUsersCount - len(top3) {
		want = append(want, userConnections{fmt.Sprintf("u%02d", i), 1})
	}
	eventually(t, 3*time.Second, "top 20 of 28 users", func() bool {
		return slices.Equal(adminStats(t, td).TopUsers, want)
	})
	if snap := adminStats(t, td); snap.Users != 28 || snap.Connections != 31 {
		t.Fatalf("users %d connections %d, want 28 and 31", snap.Users, snap.Connections)
	}

	for _, c := range carol {
		_ = c.Close()
	}
	want = slices.Concat(top3[1:], want[len(top3):], []userConnections{{"u17", 1}})
	eventually(t, 3*time.Second, "carol gone from the top users", func() bool {
		return slices.Equal(adminStats(t, td).TopUsers, want)
	})
}

func TestTopUsersAreRecomputedAtMostOnceASecond(t *testing.T) {
	h := newTestHub(10, 1<<20)
	d := &daemon{hub: h}
	addClient(t, h, "a")
	now := time.Now()
	if got := d.cachedTopUsers(now); !slices.Equal(got, []userConnections{{"a", 1}}) {
		t.Fatalf("top users %v, want a", got)
	}
	addClient(t, h, "b")
	addClient(t, h, "b")
	if got := d.cachedTopUsers(now.Add(topUsersMaxAge - time.Millisecond)); !slices.Equal(got, []userConnections{{"a", 1}}) {
		t.Fatalf("top users %v within a second, want the cached list", got)
	}
	if got := d.cachedTopUsers(now.Add(topUsersMaxAge)); !slices.Equal(got, []userConnections{{"b", 2}, {"a", 1}}) {
		t.Fatalf("top users %v after a second, want b then a", got)
	}
}

func TestAdminStatsListsAreEmptyNotNull(t *testing.T) {
	// A fresh daemon has no users and perhaps no throughput sample yet;
	// the page reading /admin/stats gets lists either way.
	td := startDaemon(t, startRedis(t), nil)
	resp, body := adminGet(t, td.adminURL+"/admin/stats", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/admin/stats: %d", resp.StatusCode)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal([]byte(body), &fields); err != nil {
		t.Fatal(err)
	}
	if got := string(fields["top_users"]); got != "[]" {
		t.Errorf("top_users of an idle daemon: %s, want []", got)
	}
	if got := string(fields["throughput"]); !strings.HasPrefix(got, "[") {
		t.Errorf("throughput: %s, want a list", got)
	}
}

func TestAdminStatsLastMinuteRatesAndThroughputCountDeliveries(t *testing.T) {
	t.Parallel()
	td := startDaemon(t, startRedis(t), map[string]string{"LOG_LEVEL": "info"})
	td.waitReady()
	conn := td.dial("u")
	const n = 40
	for i := range n {
		td.publish("u", event("u", i))
	}
	for range n {
		readText(t, conn, 5*time.Second)
	}
	eventually(t, 5*time.Second, "frames counted", func() bool { return td.d.stats.FramesDelivered.Load() == n })
	// A sample taken after the deliveries, and one more to see the series grow.
	points := len(adminStats(t, td).Throughput)
	eventually(t, 3*time.Second, "a throughput sample after the deliveries", func() bool {
		return len(adminStats(t, td).Throughput) > points
	})
	first := adminStats(t, td)
	eventually(t, 3*time.Second, "another throughput sample", func() bool {
		return len(adminStats(t, td).Throughput) > len(first.Throughput)
	})
	snap := adminStats(t, td)

	// The daemon started less than a minute ago: the window is its uptime
	// and covers every delivery; probes are not messages.
	// (The first sample is taken a moment before the start time is noted.)
	if snap.WindowSeconds <= 1 || snap.WindowSeconds > snap.UptimeSeconds+0.1 || snap.WindowSeconds >= rateWindow.Seconds() {
		t.Fatalf("window %vs with uptime %vs", snap.WindowSeconds, snap.UptimeSeconds)
	}
	for _, name := range []string{"frames_delivered", "messages_received", "connections_accepted"} {
		want := uint64(n)
		if name == "connections_accepted" {
			want = 1
		}
		if got := snap.LastMinute[name]; got != want || snap.Counters[name] != want {
			t.Errorf("%s: last minute %d, total %d; want %d", name, got, snap.Counters[name], want)
		}
		if got, want := snap.RatesPerSecond[name], float64(want)/snap.WindowSeconds; math.Abs(got-want) > 1e-9 {
			t.Errorf("%s rate %v/s, want %v/s over %vs", name, got, want, snap.WindowSeconds)
		}
	}
	if len(snap.LastMinute) != len(snap.Counters) || len(snap.RatesPerSecond) != len(snap.Counters) {
		t.Errorf("last_minute %v and rates %v do not cover the counters %v", snap.LastMinute, snap.RatesPerSecond, snap.Counters)
	}

	// One point a second, in order; together they hold every delivery.
	var delivered, received uint64
	for i, p := range snap.Throughput {
		delivered += p.FramesDelivered
		received += p.MessagesReceived
		if i > 0 && p.Time <= snap.Throughput[i-1].Time {
			t.Errorf("throughput points out of order: %v", snap.Throughput)
		}
	}
	if delivered != n || received != n {
		t.Errorf("throughput series sums to %d frames, %d messages; want %d each: %v", delivered, received, n, snap.Throughput)
	}
	if got, upper := len(snap.Throughput), int(snap.UptimeSeconds); got < 2 || got > upper {
		t.Errorf("%d throughput points after %vs", got, snap.UptimeSeconds)
	}
	if last := snap.Throughput[len(snap.Throughput)-1].Time; math.Abs(float64(time.Now().Unix()-last)) > 2 {
		t.Errorf("last throughput point at %d, now %d", last, time.Now().Unix())
	}
}

func TestStatsSamplerKeepsAMinuteOfOneSecondSamples(t *testing.T) {
	stats := &Stats{}
	s := newStatsSampler(stats)
	start := s.samples[0].at
	const seconds = 90
	for i := 1; i <= seconds; i++ {
		stats.FramesDelivered.Add(uint64(i))
		stats.MessagesReceived.Add(1)
		s.sample(start.Add(time.Duration(i) * time.Second))
	}
	now := start.Add(seconds * time.Second)
	_, growth, span, series := s.window(now)
	if span != rateWindow {
		t.Fatalf("window spans %v, want %v", span, rateWindow)
	}
	if len(series) != int(rateWindow/time.Second) {
		t.Fatalf("%d throughput points, want one a second for a minute", len(series))
	}
	// The last minute is samples 31..90.
	var want uint64
	for i := seconds - 59; i <= seconds; i++ {
		want += uint64(i)
		if p := series[i-(seconds-59)]; p.FramesDelivered != uint64(i) || p.MessagesReceived != 1 || p.Time != start.Add(time.Duration(i)*time.Second).Unix() {
			t.Fatalf("point for second %d: %+v", i, p)
		}
	}
	if growth["frames_delivered"] != want || growth["messages_received"] != 60 {
		t.Fatalf("growth %v, want frames_delivered %d and messages_received 60", growth, want)
	}
	if len(s.samples) != 61 {
		t.Fatalf("%d samples kept, want 61", len(s.samples))
	}
}

func TestAdminStatsSendQueuesShowPressureAndDrainToZero(t *testing.T) {
	const limitBytes = 1 << 20
	td := startDaemon(t, startRedis(t), map[string]string{
		"SEND_QUEUE_SIZE":  "64",
		"SEND_QUEUE_BYTES": fmt.Sprint(limitBytes),
		"LOG_LEVEL":        "info",
	})
	td.waitReady()
	big := `{"type":"blob","data":"` + strings.Repeat("x", 64<<10) + `"}`
	queues := func() sendQueueState { return adminStats(t, td).SendQueues }

	// A client that stops reading: frames pile up behind the blocked write
	// (WRITE_WAIT is 10 s), then it closes its socket.
	closing := dialStuck(t, td, "closing")
	publishUntil(t, td, "closing", big, 2000, func() bool { return td.d.hub.queuedFrames.Load() >= 3 })
	var q sendQueueState
	eventually(t, 3*time.Second, "queued frames and bytes in /admin/stats", func() bool {
		q = queues()
		return q.QueuedFrames >= 3 && q.QueuedBytes == q.QueuedFrames*int64(len(big))
	})
	if q.LimitFrames != 64 || q.LimitBytes != limitBytes {
		t.Fatalf("limits %d frames %d bytes, want 64 and %d", q.LimitFrames, q.LimitBytes, limitBytes)
	}
	_ = closing.Close()
	eventually(t, 5*time.Second, "queues empty once it closed", func() bool {
		q := queues()
		return q.QueuedFrames == 0 && q.QueuedBytes == 0 && td.d.hub.connectionCount("closing") == 0
	})

	// A client that never reads, until its queue overflows.
	slow := dialStuck(t, td, "slow")
	peak := int64(0)
	publishUntil(t, td, "slow", big, 2000, func() bool {
		peak = max(peak, queues().QueuedBytes)
		return td.d.stats.SlowDisconnects.Load() > 0
	})
	if peak > limitBytes || peak < limitBytes/2 {
		t.Errorf("queued bytes peaked at %d before the overflow, want close to the %d limit", peak, limitBytes)
	}
	eventually(t, 5*time.Second, "queues empty once it overflowed", func() bool {
		q := queues()
		return q.QueuedFrames == 0 && q.QueuedBytes == 0
	})
	_ = slow.Close()
	eventually(t, 5*time.Second, "slow client unregistered", func() bool { return adminStats(t, td).Connections == 0 })
	if q := queues(); q.QueuedFrames != 0 || q.QueuedBytes != 0 {
		t.Fatalf("queues %+v with no client", q)
	}
}

func TestAdminStatsRedisStateFollowsTheSubscription(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	td := startDaemon(t, r, map[string]string{"LOG_LEVEL": "info"})
	td.waitReady()
	// Probes come back every 100 ms.
	eventually(t, 3*time.Second, "a recent read from Redis", func() bool {
		s := adminStats(t, td).Redis
		return s.LastReceivedSecondsAgo >= 0 && s.LastReceivedSecondsAgo < 0.5
	})
	snap := adminStats(t, td)
	if got := snap.Redis; got.Addr != r.addr() || !got.Subscribed || !got.Ready || got.NotReady != "" || got.Failures != 0 {
		t.Fatalf("redis with Redis up: %+v, want %s subscribed and ready, no failures", got, r.addr())
	}
	if !snap.Ready || snap.NotReady != "" {
		t.Fatalf("daemon ready %v (%q) with Redis up", snap.Ready, snap.NotReady)
	}

	r.kill()
	eventually(t, 10*time.Second, "unsubscribed after Redis died", func() bool {
		s := adminStats(t, td)
		return !s.Redis.Subscribed && !s.Redis.Ready && s.Redis.NotReady != "" && s.Redis.Failures > 0 &&
			!s.Ready && s.NotReady != ""
	})
	failures := adminStats(t, td).Redis.Failures
	eventually(t, 5*time.Second, "each failed retry counted", func() bool {
		return adminStats(t, td).Redis.Failures > failures
	})

	r.start()
	eventually(t, 10*time.Second, "subscribed again", func() bool {
		s := adminStats(t, td).Redis
		return s.Subscribed && s.Ready && s.NotReady == ""
	})
	if got := adminStats(t, td).Redis.Failures; got <= failures {
		t.Fatalf("failures %d after the restart, want more than %d: they are totals", got, failures)
	}
}

func TestAdminStatsIdentifiesTheInstanceAndItsUptime(t *testing.T) {
	r := startRedis(t)
	td := startDaemon(t, r, nil)
	first := adminStats(t, td)
	if first.Version != "dev" || first.AuthMode != authLoopback {
		t.Fatalf("version %q auth_mode %q, want dev and %s", first.Version, first.AuthMode, authLoopback)
	}
	if !strings.HasSuffix(first.Instance, "/"+td.d.id) || len(first.Instance) <= len(td.d.id)+1 {
		t.Fatalf("instance %q, want host/%s", first.Instance, td.d.id)
	}
	if age := time.Since(first.StartedAt); age < 0 || age > 5*time.Second || first.StartedAt.Location() != time.UTC {
		t.Fatalf("started_at %v, %v ago", first.StartedAt, age)
	}
	time.Sleep(20 * time.Millisecond)
	second := adminStats(t, td)
	if second.Instance != first.Instance || !second.StartedAt.Equal(first.StartedAt) {
		t.Fatalf("instance %q started %v, then %q started %v", first.Instance, first.StartedAt, second.Instance, second.StartedAt)
	}
	if grew := second.UptimeSeconds - first.UptimeSeconds; grew < 0.02 || grew > 5 {
		t.Fatalf("uptime grew by %vs over 20 ms or more", grew)
	}
	if other := adminStats(t, startDaemon(t, r, nil)); other.Instance == first.Instance {
		t.Fatalf("two daemons both call themselves %q", other.Instance)
	}
}

// daemonWithIdleClients builds a daemon that is never run (its Redis address
// answers nothing) holding conns connection-less clients spread over users,
// for benchmarks of what reads the hub.
func daemonWithIdleClients(b *testing.B, conns, users int) *daemon {
	b.Helper()
	cfg, err := loadConfig(envOf(map[string]string{"REDIS_HOST": "127.0.0.1", "REDIS_PORT": "1"}))
	if err != nil {
		b.Fatal(err)
	}
	d, err := newDaemon(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		d.stopAuth()
		_ = d.rdb.Close()
	})
	for i := range conns {
		addClient(b, d.hub, fmt.Sprintf("user%d", i%users))
	}
	return d
}

// BenchmarkAdminStats serves /admin/stats from a daemon holding 10 000
// connections of 5 000 users and a full minute of samples: what one poll of
// the operator page costs. "cached" reuses the top-users list, as polls
// within a second do; "fresh" recomputes it every time.
//
//	go test -run '^$' -bench AdminStats
func BenchmarkAdminStats(b *testing.B) {
	d := daemonWithIdleClients(b, 10000, 5000)
	now := time.Now()
	d.sampler.samples = nil
	for i := rateWindow / time.Second; i >= 0; i-- {
		d.stats.FramesDelivered.Add(1000)
		d.sampler.sample(now.Add(-i * time.Second))
	}
	for _, mode := range []string{"cached", "fresh"} {
		b.Run(mode, func(b *testing.B) {
			req := httptest.NewRequest(http.MethodGet, "/admin/stats", nil)
			b.ReportAllocs()
			for b.Loop() {
				if mode == "fresh" {
					d.topAt = time.Time{}
				}
				rec := httptest.NewRecorder()
				d.handleStats(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("status %d", rec.Code)
				}
			}
		})
	}
}
