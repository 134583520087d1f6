package testproc

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
)

// TestSentinelSetFailsOver pins the Sentinel helper: after the master is
// killed the sentinels promote the replica, which has the data and takes
// writes, and a go-redis failover client finds it.
func TestSentinelSetFailsOver(t *testing.T) {
	skipShort(t)
	t.Parallel()
	ctx := context.Background()
	start := time.Now()
	s := StartSentinelSet(t)
	t.Logf("sentinel set ready in %v", time.Since(start).Round(time.Millisecond))
	old := s.MasterAddr()
	if old != s.Master.Addr() {
		t.Fatalf("sentinels report master %s, want %s", old, s.Master.Addr())
	}
	if err := s.Master.Client().Set(ctx, "fanout:test:sentinel", "before", 0).Err(); err != nil {
		t.Fatalf("set on master: %v", err)
	}
	if acked, err := s.Master.Client().Do(ctx, "WAIT", 1, 5000).Int(); err != nil || acked != 1 {
		t.Fatalf("WAIT for the replica: %d replicas, %v", acked, err)
	}

	killed := time.Now()
	s.KillMaster()
	newAddr := s.WaitFailover(t, old, 20*time.Second)
	t.Logf("failover from %s to %s in %v", old, newAddr, time.Since(killed).Round(time.Millisecond))
	if s.Killed.Addr() != old || newAddr != s.Master.Addr() {
		t.Fatalf("killed %s, new master %s, s.Master %s; want %s killed and s.Master the new one",
			s.Killed.Addr(), newAddr, s.Master.Addr(), old)
	}
	promoted := s.Master.Client()
	if got, err := promoted.Get(ctx, "fanout:test:sentinel").Result(); err != nil || got != "before" {
		t.Fatalf("get on new master: %q, %v; want %q", got, err, "before")
	}
	if err := promoted.Set(ctx, "fanout:test:sentinel", "after", 0).Err(); err != nil {
		t.Fatalf("set on new master: %v", err)
	}

	// The old master comes back as a replica of the new one: the sentinels
	// reconfigure it on their 10 s INFO round, and a replica's full sync
	// follows, so a loaded machine takes more than 15 s (seen once).
	restarted := time.Now()
	s.RestartKilled()
	WaitFor(t, 30*time.Second, old+" back as replica of "+newAddr, func() string {
		info, err := QueryText(old, "INFO", "replication")
		if err != nil {
			return err.Error()
		}
		master := net.JoinHostPort(InfoField(info, "master_host"), InfoField(info, "master_port"))
		if InfoField(info, "role") != "slave" || master != newAddr || InfoField(info, "master_link_status") != "up" {
			return fmt.Sprintf("role:%s master %s link %s", InfoField(info, "role"), master, InfoField(info, "master_link_status"))
		}
		return ""
	})
	t.Logf("%s back as replica in %v", old, time.Since(restarted).Round(time.Millisecond))

	failover := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: s.Name, SentinelAddrs: s.SentinelAddrs()})
	defer failover.Close()
	if got, err := failover.Get(ctx, "fanout:test:sentinel").Result(); err != nil || got != "after" {
		t.Fatalf("get through the sentinels: %q, %v; want %q", got, err, "after")
	}
}

// TestClusterHelpers pins the Cluster helper and the Redis 7.0 sharded
// pub/sub behaviour the daemon relies on: a node answers SSUBSCRIBE of a
// slot it does not serve with MOVED and stays usable; moving a slot away
// sends its subscribers an unsolicited sunsubscribe; a replica serves
// SSUBSCRIBE, keeps its subscribers when promoted, and a killed master
// that comes back as a replica takes go-redis's resubscription and
// delivers without a sunsubscribe.
func TestClusterHelpers(t *testing.T) {
	skipShort(t)
	t.Parallel()
	ctx := context.Background()
	start := time.Now()
	c := StartCluster(t)
	t.Logf("cluster ready in %v", time.Since(start).Round(time.Millisecond))

	masters := c.Masters()
	if len(masters) != 3 {
		t.Fatalf("masters %v, want 3", masters)
	}
	for addr, slots := range masters {
		if replicas := c.ReplicasOf(addr); len(replicas) != 1 {
			t.Fatalf("master %s (%d slots) has replicas %v, want one", addr, slots, replicas)
		}
	}
	for _, key := range []string{"workflow:events:alice", "fanout:history:{workflow:events:alice}",
		"{user}a", "a{}b", "a{b}{c}", "{}{x}", "", "k{"} {
		want, err := Query(c.Seeds()[0], "CLUSTER", "KEYSLOT", key)
		if err != nil {
			t.Fatal(err)
		}
		if got := history.Slot(key); int64(got) != want.(int64) {
			t.Fatalf("history.Slot(%q) = %d, Redis says %d", key, got, want)
		}
	}

	channel := "workflow:events:alice"
	slot := c.Slot(channel)
	owner := c.MasterFor(channel)
	var other string
	for addr := range masters {
		if addr != owner {
			other = addr
			break
		}
	}

	// Through the cluster client.
	cluster := c.Client()
	clusterSub := cluster.SSubscribe(ctx, channel)
	defer clusterSub.Close()
	expectSubscription(t, clusterSub, "ssubscribe", channel)
	if err := cluster.SPublish(ctx, channel, "hello").Err(); err != nil {
		t.Fatalf("spublish: %v", err)
	}
	expectMessage(t, clusterSub, channel, "hello")

	// A node that does not serve the slot answers MOVED; the connection
	// stays subscribed-capable.
	otherClient := redis.NewClient(&redis.Options{Addr: other})
	defer otherClient.Close()
	wrongSub := otherClient.SSubscribe(ctx, channel)
	defer wrongSub.Close()
	_, err := wrongSub.ReceiveTimeout(ctx, 2*time.Second)
	if movedTo, ok := redis.IsMovedError(err); !ok || movedTo != owner ||
		err.Error() != fmt.Sprintf("MOVED %d %s", slot, owner) {
		t.Fatalf("ssubscribe on %s: %v, want MOVED %d %s", other, err, slot, owner)
	}
	ownedByOther := channelServedBy(t, c, other)
	if err := wrongSub.SSubscribe(ctx, ownedByOther); err != nil {
		t.Fatalf("ssubscribe after MOVED: %v", err)
	}
	expectSubscription(t, wrongSub, "ssubscribe", ownedByOther)

	// Moving the slot unsubscribes its subscribers on the old owner.
	ownerClient := redis.NewClient(&redis.Options{Addr: owner})
	defer ownerClient.Close()
	ownerSub := ownerClient.SSubscribe(ctx, channel)
	defer ownerSub.Close()
	expectSubscription(t, ownerSub, "ssubscribe", channel)
	if err := c.MoveSlot(slot, other); err != nil {
		t.Fatal(err)
	}
	expectSubscription(t, ownerSub, "sunsubscribe", channel)
	expectSubscription(t, clusterSub, "sunsubscribe", channel)
	c.WaitClusterOK(10 * time.Second)
	if got := c.MasterOfSlot(slot); got != other {
		t.Fatalf("slot %d served by %s after moveSlot, want %s", slot, got, other)
	}

	// reshard moves slot counts.
	var from string
	for addr := range masters {
		if addr != owner && addr != other {
			from = addr
		}
	}
	before := c.Masters()
	if err := c.Reshard(from, owner, 100); err != nil {
		t.Fatal(err)
	}
	c.WaitClusterOK(10 * time.Second)
	after := c.Masters()
	if after[from] != before[from]-100 || after[owner] != before[owner]+100 {
		t.Fatalf("reshard 100 slots %s -> %s: slots %v, then %v", from, owner, before, after)
	}

	// Kill the channel's master: its replica, which serves SSUBSCRIBE
	// and keeps its subscribers through the promotion, takes over.
	victim := other
	replica := c.ReplicasOf(victim)[0]
	replicaClient := redis.NewClient(&redis.Options{Addr: replica})
	defer replicaClient.Close()
	replicaSub := replicaClient.SSubscribe(ctx, channel)
	defer replicaSub.Close()
	expectSubscription(t, replicaSub, "ssubscribe", channel)
	victimClient := redis.NewClient(&redis.Options{Addr: victim})
	defer victimClient.Close()
	victimSub := victimClient.SSubscribe(ctx, channel)
	defer victimSub.Close()
	expectSubscription(t, victimSub, "ssubscribe", channel)
	if n, err := victimClient.SPublish(ctx, channel, "before failover").Result(); err != nil || n != 1 {
		t.Fatalf("spublish on %s: %d receivers, %v; want 1 (SPUBLISH counts the node's own subscribers)", victim, n, err)
	}
	expectMessage(t, replicaSub, channel, "before failover")
	expectMessage(t, victimSub, channel, "before failover")

	killed := time.Now()
	c.KillNode(victim)
	c.WaitClusterOK(20 * time.Second)
	t.Logf("replica %s took over from %s in %v", replica, victim, time.Since(killed).Round(time.Millisecond))
	if got := c.MasterOfSlot(slot); got != replica {
		t.Fatalf("slot %d served by %s after the failover, want %s", slot, got, replica)
	}
	if err := c.Client().SPublish(ctx, channel, "after failover").Err(); err != nil {
		t.Fatalf("spublish through a new cluster client: %v", err)
	}
	expectMessage(t, replicaSub, channel, "after failover")

	// The killed master comes back as the new master's replica;
	// go-redis resubscribes on it and it delivers, with no sunsubscribe.
	c.RestartNode(victim)
	WaitFor(t, 10*time.Second, victim+" back as replica of "+replica, func() string {
		if replicas := c.ReplicasOf(replica); len(replicas) != 1 || replicas[0] != victim {
			return fmt.Sprintf("replicas of %s: %v", replica, replicas)
		}
		return ""
	})
	c.WaitClusterOK(10 * time.Second)
	expectResubscribed(t, victimSub, channel)
	if err := replicaClient.SPublish(ctx, channel, "after restart").Err(); err != nil {
		t.Fatalf("spublish on %s: %v", replica, err)
	}
	expectMessage(t, victimSub, channel, "after restart")
}

// channelServedBy returns a user channel whose slot addr serves.
func channelServedBy(t *testing.T, c *Cluster, addr string) string {
	t.Helper()
	for i := range 10000 {
		channel := fmt.Sprintf("workflow:events:user%d", i)
		if c.MasterFor(channel) == addr {
			return channel
		}
	}
	t.Fatalf("no user channel served by %s", addr)
	return ""
}

// expectSubscription reads the next reply of sub, which must be a
// subscription event of kind for channel.
func expectSubscription(t *testing.T, sub *redis.PubSub, kind, channel string) {
	t.Helper()
	msg, err := sub.ReceiveTimeout(context.Background(), 5*time.Second)
	if err != nil {
		t.Fatalf("want %s %s: %v", kind, channel, err)
	}
	if s, ok := msg.(*redis.Subscription); !ok || s.Kind != kind || s.Channel != channel {
		t.Fatalf("got %v, want %s %s", msg, kind, channel)
	}
}

// expectMessage reads the next reply of sub, which must be payload on
// channel.
func expectMessage(t *testing.T, sub *redis.PubSub, channel, payload string) {
	t.Helper()
	msg, err := sub.ReceiveTimeout(context.Background(), 5*time.Second)
	if err != nil {
		t.Fatalf("want message %q on %s: %v", payload, channel, err)
	}
	if m, ok := msg.(*redis.Message); !ok || m.Channel != channel || m.Payload != payload {
		t.Fatalf("got %v, want message %q on %s", msg, payload, channel)
	}
}

// expectResubscribed reads sub, whose node was killed and is back, until
// go-redis has reconnected and Redis confirmed the subscription again: the
// first read reports the dropped connection.
func expectResubscribed(t *testing.T, sub *redis.PubSub, channel string) {
	t.Helper()
	for range 5 {
		msg, err := sub.ReceiveTimeout(context.Background(), 2*time.Second)
		if err != nil {
			continue
		}
		if s, ok := msg.(*redis.Subscription); ok && s.Kind == "ssubscribe" && s.Channel == channel {
			return
		}
		t.Fatalf("got %v, want ssubscribe %s after the reconnection", msg, channel)
	}
	t.Fatalf("no ssubscribe %s after the node came back", channel)
}

// skipShort skips t under -short: Sentinel and Cluster take seconds to
// start and fail over, they are the slow tier.
func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("a Sentinel or Cluster test: not under -short")
	}
}
