package redisx

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/internal/testproc"
)

func TestKeepSlotsFreshReturnsAtOnceWithoutACluster(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testproc.StartRedis(t).Addr()})
	t.Cleanup(func() { rdb.Close() })
	done := make(chan struct{})
	go func() {
		defer close(done)
		KeepSlotsFresh(context.Background(), time.Millisecond, rdb, nil)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("KeepSlotsFresh kept running with no cluster client")
	}
	// ReloadSlots leaves any other client alone.
	ReloadSlots(t.Context(), rdb)
	if err := rdb.Ping(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
}

func TestKeepSlotsFreshEndsWithItsContext(t *testing.T) {
	cluster := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{closedAddr(t)}, MaxRetries: -1})
	t.Cleanup(func() { cluster.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		KeepSlotsFresh(ctx, time.Millisecond, cluster)
	}()
	// A few reloads (of a cluster that is down: the map stays empty).
	time.Sleep(10 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("KeepSlotsFresh outlived its context")
	}
}
