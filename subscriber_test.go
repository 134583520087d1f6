package main

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"fanout/history"
	"fanout/internal/testproc"
)

func TestBadPublishesAreDroppedCountedAndLoggedSparingly(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{"MAX_MESSAGE_BYTES": "1024", "LOG_LEVEL": "info"})
	td.waitReady()
	conn := td.dial("u")

	td.publish("u", "")
	td.publish("u", "not json")
	td.publish("u", `{"type":"truncated"`)
	td.publish("u", `{"type":"big","data":"`+strings.Repeat("x", 1100)+`"}`)
	// Envelopes (history.Envelope) that are not well formed, or hold a
	// payload that would be dropped on its own.
	td.publish("u", `#1-0`)
	td.publish("u", `#x-0 {"type":"bad id"}`)
	td.publish("u", `#1-0 {"type":"truncated"`)
	td.publish("u", `#1-0 #2-0 {"type":"twice"}`)
	td.publish("u", `#1-0 {"type":"big","data":"`+strings.Repeat("x", 1100)+`"}`)
	td.publish("u", `{"type":"ok","n":1}`)
	if got := readText(t, conn, 5*time.Second); got != `{"type":"ok","n":1}` {
		t.Fatalf("first frame %q, want the first valid event", got)
	}
	// Exactly at the limit is forwarded, in an envelope too: the limit is
	// the payload's.
	exact := `{"d":"` + strings.Repeat("y", 1024-8) + `"}`
	td.publish("u", exact)
	if got := readText(t, conn, 5*time.Second); got != exact {
		t.Fatalf("a payload of exactly MAX_MESSAGE_BYTES was not forwarded")
	}
	td.publish("u", history.Envelope("1-0", exact))
	if got := readText(t, conn, 5*time.Second); got != exact {
		t.Fatalf("an envelope of a payload of exactly MAX_MESSAGE_BYTES was not forwarded as the payload")
	}
	if got := td.d.stats.MessagesInvalid.Load(); got != 3+4 {
		t.Fatalf("MessagesInvalid = %d, want 7", got)
	}
	if got := td.d.stats.MessagesTooLarge.Load(); got != 2 {
		t.Fatalf("MessagesTooLarge = %d, want 2", got)
	}
	if !strings.Contains(td.logs.String(), "Dropped published message: a malformed envelope") {
		t.Fatalf("no log line for a malformed envelope:\n%s", td.logs.String())
	}

	// A flood of bad payloads is counted in full but logged only a little.
	const flood = 500
	pipe := td.pub.Pipeline()
	for i := range flood {
		pipe.Publish(t.Context(), channelPrefix+"u", fmt.Sprintf("garbage %d", i))
	}
	if _, err := pipe.Exec(t.Context()); err != nil {
		t.Fatal(err)
	}
	td.publish("u", `{"type":"after flood"}`)
	if got := readText(t, conn, 5*time.Second); got != `{"type":"after flood"}` {
		t.Fatalf("got %q after the flood", got)
	}
	if got := td.d.stats.MessagesInvalid.Load(); got != 7+flood {
		t.Fatalf("MessagesInvalid = %d, want %d", got, 7+flood)
	}
	if lines := countLines(td.logs.String(), "Dropped published message"); lines > 20 {
		t.Fatalf("%d log lines for %d bad payloads: not rate-limited", lines, flood+4)
	}
}

func TestStartsWhileRedisIsDownAndSubscribesWhenItComesUp(t *testing.T) {
	t.Parallel()
	r := redisAt(t) // nothing listens yet
	td := startDaemon(t, r, nil)

	if status, _, err := get(td.baseURL + "/health"); err != nil || status != http.StatusOK {
		t.Fatalf("/health while Redis is down: %d %v", status, err)
	}
	status, body, err := get(td.baseURL + "/ready")
	if err != nil {
		t.Fatal(err)
	}
	if status != http.StatusServiceUnavailable || !strings.HasPrefix(body, "not ready: ") {
		t.Fatalf("/ready while Redis is down: %d %q, want 503 with a reason", status, body)
	}
	eventually(t, 10*time.Second, "retries logged", func() bool {
		return countLines(td.logs.String(), "Redis subscription failed; retrying") >= 3
	})
	conn := td.dial("u") // clients may connect before Redis is there

	r.start()
	td.waitReady()
	td.publish("u", `{"type":"first"}`)
	if got := readText(t, conn, 5*time.Second); got != `{"type":"first"}` {
		t.Fatalf("got %q", got)
	}
}

func TestReadySaysRedisUnreachableUntilTheFirstSubscriptionThenLost(t *testing.T) {
	t.Parallel()
	modes := []struct {
		name string
		env  map[string]string
		// cluster: the daemon's seeds are r's address, where nothing
		// answers; the second half (a Redis that came and went) is left
		// to the cluster tests.
		cluster bool
	}{
		{name: "pattern", env: map[string]string{}},
		{name: "pattern without history", env: map[string]string{"HISTORY": "off"}},
		{name: "user", env: map[string]string{"SUBSCRIBE_MODE": "user"}},
		{name: "cluster", env: map[string]string{"SUBSCRIBE_MODE": "user", "PUBSUB_SHARDED": "true"}, cluster: true},
	}
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			// After the daemon stops: go-redis's pool probes an address
			// whose dials failed in a goroutine that ends a second later.
			t.Cleanup(func() { testproc.WaitDialProbesDone(time.Now().Add(3 * time.Second)) })
			r := redisAt(t) // nothing listens yet
			if mode.cluster {
				mode.env["REDIS_CLUSTER_ADDRS"] = r.addr()
			}
			td := startDaemon(t, r, mode.env)
			retries := "Redis subscription failed; retrying"
			if mode.cluster {
				retries = "Reading the Redis Cluster slot map failed; retrying"
			}
			eventually(t, 10*time.Second, "retries logged", func() bool { return countLines(td.logs.String(), retries) >= 3 })
			status, body, err := get(td.baseURL + "/ready")
			if err != nil || status != http.StatusServiceUnavailable || strings.TrimSpace(body) != "not ready: "+notReadyUnreachable {
				t.Fatalf("/ready while Redis was never reached: %d %q %v, want 503 %q", status, body, err, notReadyUnreachable)
			}
			if mode.cluster {
				return
			}
			r.start()
			td.waitReady()
			r.kill()
			waitFor(t, 10*time.Second, "/ready says the subscription was lost", func() string {
				if _, body, _ := get(td.baseURL + "/ready"); strings.TrimSpace(body) != "not ready: "+notReadyLost {
					return body
				}
				return ""
			})
		})
	}
}

func TestRedisRestartKeepsClientsConnectedAndDeliveryResumes(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	td := startDaemon(t, r, nil)
	td.waitReady()
	conn := td.dial("u")
	td.publish("u", `{"n":1}`)
	if got := readText(t, conn, 5*time.Second); got != `{"n":1}` {
		t.Fatalf("got %q", got)
	}

	r.kill()
	eventually(t, 10*time.Second, "not ready after Redis died", func() bool {
		return td.readyStatus() == http.StatusServiceUnavailable
	})
	restarted := time.Now()
	r.start()
	td.waitReady()
	took := time.Since(restarted)
	if took > 5*time.Second {
		t.Fatalf("ready again %v after the restart, want a few seconds", took)
	}
	t.Logf("ready again %v after redis-server was started again", took.Round(time.Millisecond))
	td.publish("u", `{"n":2}`)
	if got := readText(t, conn, 5*time.Second); got != `{"n":2}` {
		t.Fatalf("after restart got %q on the same connection", got)
	}
	if td.d.stats.RedisFailures.Load() == 0 {
		t.Fatal("the lost subscription was not counted")
	}
}

func TestSubscriptionThatSilentlyStopsDeliveringIsCaughtByProbe(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	proxy := newBlackholeProxy(t, r.addr())
	td := startDaemon(t, r, map[string]string{"REDIS_PORT": strconv.Itoa(proxy.port())})
	td.waitReady()
	conn := td.dial("u")
	td.publish("u", `{"n":1}`) // published straight to Redis, not through the proxy
	if got := readText(t, conn, 5*time.Second); got != `{"n":1}` {
		t.Fatalf("got %q", got)
	}

	// Every connection the daemon has open now goes silent, as a pub/sub
	// connection can after a failover; the sockets stay up.
	proxy.blackholeExisting()
	silenced := time.Now()
	eventually(t, 10*time.Second, "not ready once probes stop coming back", func() bool {
		return td.readyStatus() == http.StatusServiceUnavailable
	})
	detected := time.Since(silenced)
	td.waitReady()
	t.Logf("silent subscription detected after %v, resubscribed after %v (PROBE_INTERVAL=100ms, PROBE_TIMEOUT=400ms)",
		detected.Round(time.Millisecond), time.Since(silenced).Round(time.Millisecond))
	td.publish("u", `{"n":2}`)
	if got := readText(t, conn, 5*time.Second); got != `{"n":2}` {
		t.Fatalf("after resubscribing got %q", got)
	}
	if td.d.stats.ProbesMissed.Load() == 0 {
		t.Fatal("missed probe not counted")
	}
	if !strings.Contains(td.logs.String(), "Redis self-probe overdue; resubscribing") {
		t.Fatal("missed probe not logged")
	}
}

func TestProbesOfOtherInstancesReachNoUser(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	a := startDaemon(t, r, nil)
	b := startDaemon(t, r, nil)
	a.waitReady()
	b.waitReady()
	conn := a.dial("_fanout")
	// Let several rounds of b's probes pass through a; there is no signal
	// for "nothing happened".
	time.Sleep(300 * time.Millisecond)
	a.publish("_fanout", `{"type":"mine"}`)
	if got := readText(t, conn, 5*time.Second); got != `{"type":"mine"}` {
		t.Fatalf("user _fanout got %q", got)
	}
	// Counted once broadcast: the client may read it first.
	eventually(t, 5*time.Second, "the event counted", func() bool { return a.d.stats.MessagesReceived.Load() >= 1 })
	if got := a.d.stats.MessagesReceived.Load(); got != 1 {
		t.Fatalf("MessagesReceived = %d: probes were counted as user messages", got)
	}
}

// blackholeProxy forwards TCP to a target until told to silently drop all
// traffic of the connections open at that moment.
type blackholeProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	pairs  []*proxyPair
	wg     sync.WaitGroup
}

type proxyPair struct {
	client, server net.Conn
	mu             sync.Mutex
	silent         bool
}

func newBlackholeProxy(t *testing.T, target string) *blackholeProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &blackholeProxy{ln: ln, target: target}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, pair := range p.pairs {
			pair.client.Close()
			pair.server.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *blackholeProxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *blackholeProxy) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		pair := &proxyPair{client: client, server: server}
		p.mu.Lock()
		p.pairs = append(p.pairs, pair)
		p.mu.Unlock()
		p.wg.Go(func() { pair.pipe(server, client) })
		p.wg.Go(func() { pair.pipe(client, server) })
	}
}

// pipe copies src to dst, discarding the bytes once the pair is silent.
func (pair *proxyPair) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			dst.Close()
			return
		}
		pair.mu.Lock()
		silent := pair.silent
		pair.mu.Unlock()
		if silent {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			src.Close()
			return
		}
	}
}

func (p *blackholeProxy) blackholeExisting() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pair := range p.pairs {
		pair.mu.Lock()
		pair.silent = true
		pair.mu.Unlock()
	}
}

// TestABusyRecorderIsNoDeadSubscription: while the recorder broadcasts a
// large batch (here one broadcast held back 1.5 s, longer than
// PROBE_TIMEOUT), the subscription waits to hand it the next event and
// reads nothing, its probe included. That is the daemon being busy, not
// Redis being silent: the prober does not resubscribe, which would drop
// the events still in the connection, and every event arrives with its
// id.
func TestABusyRecorderIsNoDeadSubscription(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	td := startDaemon(t, r, map[string]string{"LOG_LEVEL": "info"})
	td.waitReady()
	rec := td.d.sub.(*patternSubscription).sink.(*recorder)
	slow := event("u", 0)
	rec.mu.Lock()
	broadcast := rec.broadcast
	rec.broadcast = func(username string, msg *message) {
		if string(msg.data) == slow {
			time.Sleep(1500 * time.Millisecond)
		}
		broadcast(username, msg)
	}
	rec.mu.Unlock()
	s := openHistory(t, historyTransports()[0], td.baseURL, url.Values{"username": {"u"}}, "")
	eventually(t, 5*time.Second, "connection registered", func() bool { return td.d.hub.connectionCount("u") == 1 })

	payloads := numbered("u", 20)
	publishNow(t, td.pub, "u", payloads[0])
	time.Sleep(50 * time.Millisecond)
	publishNow(t, td.pub, "u", payloads[1:]...)
	expectRecorded(t, td.pub, "u", payloads, s)
	if n := td.d.stats.ProbesMissed.Load(); n != 0 {
		t.Fatalf("%d probes missed while the recorder was busy", n)
	}
	if n := td.d.stats.RedisFailures.Load(); n != 0 {
		t.Fatalf("%d Redis failures while the recorder was busy", n)
	}
}
