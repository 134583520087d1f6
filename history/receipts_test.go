package history

import (
	"context"
	"testing"

	"fanout/internal/testproc"
)

// TestAcksOnARedisClusterLiveInTheUsersSlot: the ack script's two keys
// (the seen key and the history) share the user's hash slot in both
// layouts, so one script call records an ack on a Redis Cluster.
func TestAcksOnARedisClusterLiveInTheUsersSlot(t *testing.T) {
	if testing.Short() {
		t.Skip("a Redis Cluster takes seconds to start")
	}
	c := testproc.StartCluster(t)
	cc := c.Client()
	ctx := context.Background()
	for _, layout := range []Layout{{}, {Sharded: true}} {
		pub := NewPublisher(cc, Retention{})
		pub.Layout = layout
		id, err := pub.Publish(ctx, "alice", []byte(`{"n":1}`))
		if err != nil {
			t.Fatal(err)
		}
		pipe := cc.Pipeline()
		cmd := AckScript.EvalSha(ctx, pipe, []string{layout.SeenKey("alice"), layout.Key("alice")}, id, DefaultReceiptsChannel, "alice", 60000)
		if err := ExecScripts(ctx, cc, pipe); err != nil {
			t.Fatalf("sharded=%v: %v", layout.Sharded, err)
		}
		if n, err := cmd.Int(); err != nil || n != 1 {
			t.Fatalf("sharded=%v: ack script %d %v, want 1 (recorded and published)", layout.Sharded, n, err)
		}
		if seen, err := layout.Seen(ctx, cc, "alice"); err != nil || seen != id {
			t.Fatalf("sharded=%v: seen %q %v, want %s", layout.Sharded, seen, err, id)
		}
	}
}
