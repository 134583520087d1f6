package redisx

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// ReloadSlots reads a Cluster client's slot map again, in the background;
// it does nothing for any other client. It is the one place fanout asks
// go-redis to: go-redis alone keeps sending a dead master's slots to it
// long after its replica took over. A failed read keeps the last map.
func ReloadSlots(ctx context.Context, c redis.Scripter) {
	if cc, ok := c.(*redis.ClusterClient); ok {
		cc.ReloadState(ctx)
	}
}

// KeepSlotsFresh runs ReloadSlots on every Cluster client among clients
// each period until ctx ends; it returns at once when there is none.
func KeepSlotsFresh(ctx context.Context, every time.Duration, clients ...redis.UniversalClient) {
	var clusters []redis.UniversalClient
	for _, c := range clients {
		if _, ok := c.(*redis.ClusterClient); ok {
			clusters = append(clusters, c)
		}
	}
	if len(clusters) == 0 {
		return
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, c := range clusters {
			ReloadSlots(ctx, c)
		}
	}
}

// IsReply reports whether err is Redis's own answer (a command refused),
// not a failure to reach it: only the latter says a Cluster client may be
// sending to a node that is gone (ReloadSlots).
func IsReply(err error) bool {
	var reply redis.Error
	return errors.As(err, &reply)
}
