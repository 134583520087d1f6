package history

import (
	"context"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"

	"fanout/internal/redisx"
)

// Layout is how one deployment names a user's Redis keys and publishes
// their events. The zero Layout is classic: PUBLISH, and the history key
// tagged on the username. Sharded (PUBSUB_SHARDED=true) is SPUBLISH, and
// the history key tagged on the channel's full name, so that the key and
// the channel are in one Redis Cluster hash slot: the node that runs the
// publish script is the node whose SSUBSCRIBE'd instances get the event.
type Layout struct {
	// Sharded is PUBSUB_SHARDED: instances SSUBSCRIBE each user's channel
	// on the node that owns its slot, and publishers SPUBLISH it there.
	Sharded bool
}

// Key returns the Redis key of username's history Stream:
// fanout:history:{alice} classic, fanout:history:{workflow:events:alice}
// sharded.
func (l Layout) Key(username string) string {
	if l.Sharded {
		return keyPrefix + "{" + Channel(username) + "}"
	}
	return keyPrefix + "{" + username + "}"
}

// Channel returns the pub/sub channel of username, the same in every
// layout: workflow:events:alice.
func (Layout) Channel(username string) string { return Channel(username) }

// publishScript returns the publish script of the layout and its source.
func (l Layout) publishScript() (*redis.Script, string) {
	if l.Sharded {
		return publishShardedScript, PublishShardedSource
	}
	return publishScript, PublishSource
}

// After returns up to count events of username after the event id after
// (exclusive), oldest first; "" means from the oldest retained.
func (l Layout) After(ctx context.Context, rdb redis.Cmdable, username, after string, count int64) ([]Event, error) {
	start := "-"
	if after != "" {
		start = "(" + after
	}
	msgs, err := rdb.XRangeN(ctx, l.Key(username), start, "+", count).Result()
	if err != nil {
		return nil, fmt.Errorf("read history of %s: %w", username, err)
	}
	return events(msgs), nil
}

// From returns up to count events of username from the event id from
// (inclusive), oldest first.
func (l Layout) From(ctx context.Context, rdb redis.Cmdable, username, from string, count int64) ([]Event, error) {
	msgs, err := rdb.XRangeN(ctx, l.Key(username), from, "+", count).Result()
	if err != nil {
		return nil, fmt.Errorf("read history of %s: %w", username, err)
	}
	return events(msgs), nil
}

// Last returns the last n events of username, oldest first.
func (l Layout) Last(ctx context.Context, rdb redis.Cmdable, username string, n int64) ([]Event, error) {
	msgs, err := rdb.XRevRangeN(ctx, l.Key(username), "+", "-", n).Result()
	if err != nil {
		return nil, fmt.Errorf("read history of %s: %w", username, err)
	}
	evs := events(msgs)
	for i, j := 0, len(evs)-1; i < j; i, j = i+1, j-1 {
		evs[i], evs[j] = evs[j], evs[i]
	}
	return evs, nil
}

// ClusterSlots is the number of hash slots of a Redis Cluster.
const ClusterSlots = redisx.ClusterSlots

// Slot returns the Redis Cluster hash slot of a key or shard channel:
// CRC16 (XMODEM) of its hash tag (the text between the first '{' and the
// next '}', when not empty) or else of the whole name, modulo 16384. A
// user's channel and its sharded history key share one.
func Slot(key string) int {
	if open := strings.IndexByte(key, '{'); open >= 0 {
		if end := strings.IndexByte(key[open+1:], '}'); end > 0 {
			key = key[open+1 : open+1+end]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % ClusterSlots
}
