package history

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"

	"fanout/internal/testproc"
)

func TestPublishAllKeepsOrderAndReturnsEachID(t *testing.T) {
	// No Load: PublishAll brings the script itself, even after SCRIPT FLUSH.
	rdb := redis.NewClient(&redis.Options{Addr: testproc.StartRedis(t).Addr()})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	pub := NewPublisher(rdb, Retention{})
	for round := range 2 {
		var payloads [][]byte
		for i := range 300 {
			payloads = append(payloads, fmt.Appendf(nil, `{"round":%d,"n":%d}`, round, i))
		}
		ids, err := pub.PublishAll(ctx, "gus", payloads)
		if err != nil {
			t.Fatal(err)
		}
		evs, err := After(ctx, rdb, "gus", "", 1000)
		if err != nil {
			t.Fatal(err)
		}
		evs = evs[round*300:]
		if len(ids) != 300 || len(evs) != 300 {
			t.Fatalf("round %d: %d ids, %d events, want 300", round, len(ids), len(evs))
		}
		for i := range ids {
			if ids[i] != evs[i].ID || evs[i].Data != string(payloads[i]) {
				t.Fatalf("round %d event %d: id %s data %s, want %s %s", round, i, evs[i].ID, evs[i].Data, ids[i], payloads[i])
			}
		}
		if err := rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestPublishAllPublishesNothingWhenOnePayloadIsInvalid(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testproc.StartRedis(t).Addr()})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	ids, err := NewPublisher(rdb, Retention{}).PublishAll(ctx, "hal", [][]byte{[]byte(`{}`), []byte(`{"x":`)})
	if !errors.Is(err, ErrInvalidPayload) || len(ids) != 0 {
		t.Fatalf("ids %v, err %v; want none and ErrInvalidPayload", ids, err)
	}
	if n, _ := rdb.XLen(ctx, HistoryKey("hal")).Result(); n != 0 {
		t.Fatalf("%d events kept, want 0", n)
	}
}
