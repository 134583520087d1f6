package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"fanout/internal/testproc"
)

// SUBSCRIBE_MODE=user across processes: the recorder lease when its holder
// dies.

// TestUserModeRecorderLeaseIsTakenOverWhenItsHolderDies kills the lease
// holder's process: its lease expires and another instance takes it.
func TestUserModeRecorderLeaseIsTakenOverWhenItsHolderDies(t *testing.T) {
	fanoutBinary(t)
	t.Parallel()
	r := testproc.StartRedis(t)
	rdb := r.Client()
	var procs []*fanout
	for range 2 {
		p := launchFanout(t, r.Addr(), testproc.FreePort(t), "SUBSCRIBE_MODE=user")
		waitSubscribed(t, p)
		procs = append(procs, p)
	}
	const holding = "Holding the recorder lease"
	var holder, other *fanout
	testproc.Eventually(t, 5*time.Second, "a lease holder", func() bool {
		for i, p := range procs {
			if strings.Contains(p.Output(), holding) {
				holder, other = p, procs[1-i]
				return true
			}
		}
		return false
	})
	holder.Kill()
	killed := time.Now()
	// Its recording subscription confirmed: the lease holder's second
	// "Subscribed to Redis" line.
	// The lease lives 5 s without renewal.
	testproc.Eventually(t, 10*time.Second, "the other instance takes the lease", func() bool {
		return strings.Contains(other.Output(), `msg="Subscribed to Redis" role=recorder`)
	})
	t.Logf("lease taken over %v after the holder was killed", time.Since(killed).Round(time.Millisecond))
	// Events for a user connected nowhere are recorded again.
	payloads := numbered("after", 10)
	for _, p := range payloads {
		if err := rdb.Publish(context.Background(), "workflow:events:after", p).Err(); err != nil {
			t.Fatal(err)
		}
	}
	testproc.Eventually(t, 5*time.Second, "recorded by the new holder", func() bool {
		return len(streamEntries(t, rdb, "after")) == len(payloads)
	})
}
