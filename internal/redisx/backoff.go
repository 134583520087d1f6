package redisx

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is the capped, jittered exponential delay between retries of a
// failing Redis job: each wait is drawn from the upper half of the current
// delay, which then doubles up to Max. The zero value is not usable; set
// Min and Max. It is owned by one goroutine.
type Backoff struct {
	// Min is the first delay, and the delay after Reset.
	Min time.Duration
	// Max caps the delay.
	Max time.Duration

	delay time.Duration
}

// Next returns how long to wait before the next retry and doubles the
// delay for the one after.
func (b *Backoff) Next() time.Duration {
	if b.delay == 0 {
		b.delay = b.Min
	}
	// Jitter keeps the instances that lost one Redis together from
	// coming back in step.
	wait := b.delay/2 + rand.N(b.delay/2+1)
	b.delay = min(b.delay*2, b.Max)
	return wait
}

// Reset starts the delays again from Min, after a success.
func (b *Backoff) Reset() { b.delay = b.Min }

// Sleep waits for d or until ctx ends, and reports whether d elapsed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
