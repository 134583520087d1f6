package testclient

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
	"fanout/internal/testproc"
)

// The publisher's side of the history tests: events published with plain
// PUBLISH, and the history read back.

// PublishSteadily sends payloads in groups of group, one group every
// every, and calls progress with the number sent after each group.
func PublishSteadily(ctx context.Context, payloads []string, group int, every time.Duration,
	send func(ctx context.Context, batch []string) error, progress func(sent int)) error {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for sent := 0; sent < len(payloads); {
		batch := payloads[sent:min(sent+group, len(payloads))]
		if err := send(ctx, batch); err != nil {
			return fmt.Errorf("publish #%d: %w", sent, err)
		}
		sent += len(batch)
		progress(sent)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

// PlainPublish sends payloads to user with plain PUBLISH, pipelined.
func PlainPublish(rdb *redis.Client, user string) func(ctx context.Context, batch []string) error {
	return func(ctx context.Context, batch []string) error {
		pipe := rdb.Pipeline()
		for _, p := range batch {
			pipe.Publish(ctx, history.Channel(user), p)
		}
		_, err := pipe.Exec(ctx)
		return err
	}
}

// PublishNow publishes payloads to user with plain PUBLISH in pipelines
// of 100.
func PublishNow(t *testing.T, rdb *redis.Client, user string, payloads ...string) {
	t.Helper()
	send := PlainPublish(rdb, user)
	for len(payloads) > 0 {
		n := min(100, len(payloads))
		if err := send(t.Context(), payloads[:n]); err != nil {
			t.Fatalf("publish: %v", err)
		}
		payloads = payloads[n:]
	}
}

// StreamEntries returns user's whole history, oldest first.
func StreamEntries(t *testing.T, rdb *redis.Client, user string) []history.Event {
	t.Helper()
	evs, err := history.After(t.Context(), rdb, user, "", 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// WaitRecorded waits until user's newest history entry holds payload and
// returns that entry.
func WaitRecorded(t *testing.T, rdb *redis.Client, user, payload string) history.Event {
	t.Helper()
	var last history.Event
	testproc.Eventually(t, 10*time.Second, "event recorded: "+payload, func() bool {
		evs, err := history.Last(t.Context(), rdb, user, 1)
		if err != nil || len(evs) == 0 {
			return false
		}
		last = evs[0]
		return last.Data == payload
	})
	return last
}
