package main

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
