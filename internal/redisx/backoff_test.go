package redisx

import (
	"context"
	"testing"
	"time"
)

func TestBackoffDoublesToMaxWithJitterAndResets(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	for _, delay := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		delay *= time.Millisecond
		if wait := b.Next(); wait < delay/2 || wait > delay {
			t.Fatalf("wait %v, want within [%v, %v]", wait, delay/2, delay)
		}
	}
	b.Reset()
	if wait := b.Next(); wait < 50*time.Millisecond || wait > 100*time.Millisecond {
		t.Fatalf("after Reset: wait %v, want within [50ms, 100ms]", wait)
	}
}

func TestBackoffJitters(t *testing.T) {
	seen := make(map[time.Duration]bool)
	for range 20 {
		b := Backoff{Min: time.Second, Max: time.Second}
		seen[b.Next()] = true
	}
	if len(seen) < 2 {
		t.Fatalf("20 first waits were all %v", seen)
	}
}

func TestSleepReportsWhetherTheWaitElapsed(t *testing.T) {
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("a wait that elapsed reported false")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if Sleep(ctx, time.Hour) || time.Since(start) > time.Second {
		t.Fatal("an ended context did not end the wait at once")
	}
}
