package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"fanout/history"
	"fanout/internal/testproc"
)

// launchActivated starts fanout as systemd starts a socket-activated
// service: the listening socket ln on descriptor 3, LISTEN_FDS=1 and
// LISTEN_PID set to the process's own pid (sh's $$, kept by exec).
func launchActivated(t *testing.T, redisAddr string, ln *net.TCPListener) *fanout {
	t.Helper()
	file, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	adminPort := testproc.FreePort(t)
	cmd := exec.Command("sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0"`, fanoutBinary(t))
	cmd.ExtraFiles = []*os.File{file}
	// PORT names another port: under socket activation it is not used.
	cmd.Env = append(append(os.Environ(), fanoutEnv(redisAddr, testproc.FreePort(t), adminPort)...), "LOG_LEVEL=info")
	return startFanoutCmd(t, cmd, port, adminPort)
}

// TestSameHostRestartWithSocketActivationRefusesNoConnect: the restart of
// docs/deployment.md's "Restarting on one host". The socket belongs to
// the supervisor (systemd's fanout.socket; here the test), so while one
// process drains and the next one starts, connections wait in the
// socket's backlog: a prober connecting every few milliseconds is never
// refused and never gets an error, the clients of the old process resume
// on the new one, and none misses or repeats an event (the publisher records as it
// publishes, as fanout publish does).
func TestSameHostRestartWithSocketActivationRefusesNoConnect(t *testing.T) {
	fanoutBinary(t)
	t.Parallel()
	r := testproc.StartRedis(t)
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	old := launchActivated(t, r.Addr(), ln)
	old.waitReady()
	if !strings.Contains(old.logs(), "socket activation") {
		t.Fatalf("the daemon did not say it serves the passed socket:\n%s", old.logs())
	}

	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	const users = 200
	var clients []*drainClient
	var names []string
	seed := uint64(time.Now().UnixNano())
	for i := range users {
		name := fmt.Sprintf("activated-%d", i)
		dc := newDrainClient(old.base, name, seed+uint64(i))
		clients, names = append(clients, dc), append(names, name)
		wg.Go(func() { dc.run(ctx) })
	}
	testproc.Eventually(t, 20*time.Second, "every client connected", func() bool {
		return old.stats().Connections == users
	})

	// The prober: a new connection and a GET /health every 5 ms.
	var probes, failed atomic.Int64
	var firstFailure atomic.Value
	probeClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	proberDone := make(chan struct{})
	go func() {
		defer close(proberDone)
		for ctx.Err() == nil {
			resp, err := probeClient.Get(old.base + "/health")
			probes.Add(1)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
			}
			if err != nil && ctx.Err() == nil {
				failed.Add(1)
				firstFailure.CompareAndSwap(nil, err.Error())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()

	published := make(chan error, 1)
	var rounds int
	var restarted atomic.Int64
	restarted.Store(-1)
	var roundNow atomic.Int64
	// The publisher records as it publishes (history.Publisher, as
	// fanout publish does): with one instance, a plain PUBLISH sent while
	// no process runs is recorded by nobody.
	publisher := history.NewPublisher(redisClient(t, r.Addr()), history.Retention{})
	go func() {
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		round := 0
		var err error
		for ; round < 40 && err == nil; round++ {
			roundNow.Store(int64(round))
			if at := restarted.Load(); at >= 0 && int64(round) > at+2 {
				break
			}
			for _, name := range names {
				if _, err = publisher.Publish(ctx, name, []byte(drainPayload(name, round))); err != nil {
					err = fmt.Errorf("publish round %d: %w", round, err)
					break
				}
			}
			select {
			case <-ctx.Done():
				err = ctx.Err()
			case <-tick.C:
			}
		}
		rounds = round
		published <- err
	}()
	time.Sleep(time.Second)

	step := time.Now()
	old.sigterm()
	exited := time.Since(step)
	next := launchActivated(t, r.Addr(), ln)
	next.waitReady()
	t.Logf("old process exited %v after SIGTERM; new one ready %v after it", exited.Round(time.Millisecond), time.Since(step).Round(time.Millisecond))
	restarted.Store(roundNow.Load())
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, dc := range clients {
		for dc.received() < rounds && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	time.Sleep(300 * time.Millisecond) // a duplicate would come now
	if n := next.stats().Connections; n != users {
		t.Errorf("the new process holds %d connections, want %d", n, users)
	}
	cancel()
	<-proberDone
	wg.Wait()

	var moves []drainMove
	refused := 0
	for _, dc := range clients {
		dc.check(t, rounds)
		_, m, _, _ := dc.state()
		moves = append(moves, m...)
		dc.mu.Lock()
		for _, n := range dc.statuses {
			refused += n
		}
		dc.mu.Unlock()
	}
	t.Logf("%d probes, %d failed; %d clients moved, %d failed dials; %d rounds; %s",
		probes.Load(), failed.Load(), len(moves), refused, rounds, gapSummary(moves))
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d connects failed during the restart, first: %v; want none", n, probes.Load(), firstFailure.Load())
	}
	if refused > 0 {
		t.Errorf("%d client dials failed during the restart; want none", refused)
	}
	if len(moves) != users {
		t.Errorf("%d clients got a 1001, want %d", len(moves), users)
	}
}
