package e2e

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
	"fanout/internal/testproc"
	"fanout/presence"
)

// TestSentinelFailoverResubscribesEveryInstanceAndResumeLosesNothing is
// issue 13's Sentinel acceptance: a master, a replica and 3 sentinels
// (Debian's redis-sentinel), two instances reaching the master through
// the sentinels, a publisher that keeps publishing; the master is killed.
// Once the sentinels promote the replica, each instance resubscribes on
// its own, /ready is 200 again, live delivery resumes, and clients that
// resume with their last id get every event the new master holds. Presence
// and read receipts work through the promoted master.
func TestSentinelFailoverResubscribesEveryInstanceAndResumeLosesNothing(t *testing.T) {
	skipShort(t)
	t.Parallel()
	for _, mode := range []string{"pattern", "user"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			sentinelFailover(t, mode)
		})
	}
}

func sentinelFailover(t *testing.T, mode string) {
	set := testproc.StartSentinelSet(t)
	env := map[string]string{
		"REDIS_SENTINEL_ADDRS":  strings.Join(set.SentinelAddrs(), ","),
		"REDIS_SENTINEL_MASTER": set.Name,
		"SUBSCRIBE_MODE":        mode,
		"LOG_LEVEL":             "info",
	}
	old := set.MasterAddr()
	daemons, bases := startTestDaemons(t, redisAddrServer(t, old), 2, env)

	rdb := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: set.Name, SentinelAddrs: set.SentinelAddrs(), MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	users := []string{"ada", "bo", "cy", "di", "ed", "fay"}
	const watcher = "gap-watch"
	pub := newSteadyPublisher(history.NewPublisher(rdb, history.Retention{}), append(users, watcher), 10*time.Millisecond)
	gw := watchGaps(t, daemons, watcher)
	clients := startResumingClients(t, users, bases)

	ctx, stopPublishing := publishUntilFlowing(t, pub, clients)
	defer stopPublishing()
	rw := watchReady(ctx, daemons)

	killed := time.Now()
	pub.markFailure()
	set.KillMaster()
	roundAtKill := pub.failedSince(t)
	promoted := set.WaitFailover(t, old, 30*time.Second)
	for _, td := range daemons {
		td.waitReady()
	}
	var gaps []time.Duration
	testproc.Eventually(t, 20*time.Second, "live events on every instance again", func() bool {
		gaps = gw.gaps(killed, func(p string) bool { return roundOf(p) > roundAtKill })
		for _, g := range gaps {
			if g < 0 {
				return false
			}
		}
		return true
	})
	sent, failed, recovered := pub.stats()
	t.Logf("%s mode: master %s killed, %s promoted; instances ready again after %v; publishes accepted again after %v (%d failed, %d sent); gap from the kill to the first live event again, per instance: %v",
		mode, old, promoted, rw.readyAfter(killed), recovered.Round(time.Millisecond), failed, sent, gaps)
	for i := range rw.notReady {
		if !rw.notReady[i].Load() {
			t.Errorf("instance %d: /ready never left 200 while the master was down", i)
		}
	}

	// Presence and read receipts go on through the promoted master: every
	// user is counted online, and an ack is recorded there.
	testproc.Eventually(t, 10*time.Second, "every user online in presence after the failover", func() bool {
		st, err := presence.Query(context.Background(), rdb, users...)
		if err != nil {
			return false
		}
		for _, s := range st {
			if !s.Online {
				return false
			}
		}
		return true
	})
	acked := historyOf(t, rdb, history.Layout{}, users[0])
	if len(acked) == 0 {
		t.Fatalf("%s has no history", users[0])
	}
	id := acked[len(acked)-1].ID
	resp, err := http.Post(bases[0]+"/ack?username="+users[0], "text/plain", strings.NewReader(`{"id":"`+id+`"}`))
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("POST /ack after the failover: %v %v", resp, err)
	}
	resp.Body.Close()
	testproc.Eventually(t, 5*time.Second, "the ack recorded on the promoted master", func() bool {
		seen, err := history.Layout{}.Seen(context.Background(), rdb, users[0])
		return err == nil && seen == id
	})

	// Some more events after the failover, then every client resumes.
	more := pub.round() + 20
	testproc.Eventually(t, 20*time.Second, "20 more rounds published", func() bool { return pub.round() >= more })
	stopPublishing()
	rw.wait()
	resumeAll(t, clients,
		func(u string) []history.Event { return historyOf(t, rdb, history.Layout{}, u) },
		func(u string) map[string]bool { return pub.lostPayloads(u, historyOf(t, rdb, history.Layout{}, u)) })
	for i, td := range daemons {
		if n := td.counter("redis_failures"); n == 0 {
			t.Errorf("instance %d: no Redis failure counted", i)
		}
		if strings.Count(td.Output(), `msg="Subscribed to Redis"`) < 2 {
			t.Errorf("instance %d: subscribed fewer than twice:\n%s", i, td.Output())
		}
		if status := td.readyStatus(); status != http.StatusOK {
			t.Errorf("instance %d: /ready %d at the end", i, status)
		}
	}
}
