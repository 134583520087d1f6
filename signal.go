package main

import (
	"context"
	"errors"
	"time"
)

// wakeup is a capacity-1 signal: wake never blocks, and the wakes sent
// before the receiver looks count as one. It is how a goroutine is told
// that work is waiting (a write side, a flusher, the cluster router) or
// that its session is to end (the prober).
type wakeup chan struct{}

func newWakeup() wakeup { return make(wakeup, 1) }

// wake signals the receiver, or does nothing when a signal is pending.
func (w wakeup) wake() {
	select {
	case w <- struct{}{}:
	default:
	}
}

// clear drops a pending signal.
func (w wakeup) clear() {
	select {
	case <-w:
	default:
	}
}

// errWaitedMax is awaitSignal's answer when max passed first.
var errWaitedMax = errors.New("waited the longest allowed")

// awaitSignal waits until done or down is closed (down: what done waits
// for will not come, such as a session that ended), for at most max. It
// returns nil, errWaitedMax, or ctx's error.
func awaitSignal(ctx context.Context, done, down <-chan struct{}, max time.Duration) error {
	t := time.NewTimer(max)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-down:
		return nil
	case <-t.C:
		return errWaitedMax
	case <-ctx.Done():
		return ctx.Err()
	}
}
