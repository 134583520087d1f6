package main

import (
	"fmt"
	"maps"
	"math"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// frontFor serves td's public routes on a new loopback server that presents
// every request as coming from the TCP peer remote, and returns its /ws URL.
// Traffic stays on loopback; only the request's RemoteAddr is rewritten.
// Register it before dialling, so that cleanup closes the connections first.
func frontFor(t *testing.T, td *testDaemon, remote string) string {
	t.Helper()
	routes := td.d.server.routes()
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.RemoteAddr = remote
		routes.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	return "ws://" + front.Listener.Addr().String() + "/ws"
}

// xff is a header carrying X-Forwarded-For.
func xff(addrs string) http.Header {
	return http.Header{"X-Forwarded-For": {addrs}}
}

// bucketTokens reads, without taking one, the tokens left in the per-address
// bucket of addr (a full bucket when addr has none yet).
func bucketTokens(td *testDaemon, addr string) float64 {
	l := td.d.server.addrLimiter
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[netip.MustParseAddr(addr)]
	if b == nil {
		return float64(l.burst)
	}
	return b.TokensAt(time.Now())
}

func TestConnectRatePerIPRefusesWith429AndRecoversWhenTheBucketRefills(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{"CONNECT_RATE_PER_IP": "1", "CONNECT_BURST_PER_IP": "3", "AUTH_MODE": "none"})
	// A client that a proxy on this host (trusted by default) forwards.
	url, client := td.wsURL+"?username=u", xff("198.51.100.9")
	for range 3 {
		dialWS(t, url, client)
	}
	got := tryDial(t, url, client)
	refusedAt := time.Now()
	if got.status != http.StatusTooManyRequests || got.retryAfter != "1" || !strings.Contains(got.line, "CONNECT_RATE_PER_IP") {
		t.Fatalf("4th dial within the burst: %+v, want 429, Retry-After 1, a line naming CONNECT_RATE_PER_IP", got)
	}
	// The refused request neither reached the hub nor took a slot.
	eventually(t, 5*time.Second, "accepted connections registered", func() bool { return td.d.hub.connectionCount("u") == 3 })
	if slots := td.d.hub.slots.Load(); slots != 3 {
		t.Fatalf("after the refusal: %d slots, want 3", slots)
	}
	if n := td.d.stats.Rejected[rejectRateLimited].Load(); n != 1 {
		t.Fatalf("Rejected[rate_limited] = %d, want 1", n)
	}
	if !strings.Contains(td.logs.String(), `msg="Rejected WebSocket request" remote=198.51.100.9 status=429 reason=rate_limited`) {
		t.Fatal("refusal not logged with reason=rate_limited")
	}

	// Retry-After is honest: the next token is there within that second.
	eventually(t, 3*time.Second, "bucket refilled", func() bool { return bucketTokens(td, "198.51.100.9") >= 1 })
	if waited := time.Since(refusedAt); waited > time.Second+500*time.Millisecond {
		t.Fatalf("token came back after %v, later than Retry-After: 1", waited)
	}
	dialWS(t, url, client)
	eventually(t, 5*time.Second, "connection after the refill registered", func() bool { return td.d.hub.connectionCount("u") == 4 })
	if n := td.d.stats.Rejected[rejectRateLimited].Load(); n != 1 {
		t.Fatalf("Rejected[rate_limited] = %d after recovering, want 1", n)
	}
}

func TestConnectRatePerIPKeepsABucketPerForwardedClient(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{
		"CONNECT_RATE_PER_IP": "0.01", "CONNECT_BURST_PER_IP": "2",
		"TRUSTED_PROXIES": "10.0.0.0/8", "AUTH_MODE": "none",
	})
	proxy := frontFor(t, td, "10.0.0.7:40000")
	url := proxy + "?username=u"

	for range 2 {
		dialWS(t, url, xff("198.51.100.9"))
	}
	if got := tryDial(t, url, xff("198.51.100.9")); got.status != http.StatusTooManyRequests {
		t.Fatalf("198.51.100.9 past its burst: %+v, want 429", got)
	}
	// Spoofing an address left of the proxy's own entry changes nothing.
	if got := tryDial(t, url, xff("192.0.2.1, 198.51.100.9")); got.status != http.StatusTooManyRequests {
		t.Fatalf("198.51.100.9 behind a forged entry: %+v, want 429", got)
	}
	// Another client behind the same proxy, and the proxy's own address
	// (a request it makes for itself), have their own buckets.
	for range 2 {
		dialWS(t, url, xff("198.51.100.10"))
	}
	dialWS(t, url, nil)
	// A direct loopback client is not limited per address.
	dialWS(t, td.wsURL+"?username=u", nil)

	eventually(t, 5*time.Second, "connections registered", func() bool { return td.d.hub.connectionCount("u") == 6 })
	logs := td.logs.String()
	for _, want := range []string{
		`msg="New WebSocket connection" username=u remote=198.51.100.9`,
		`msg="New WebSocket connection" username=u remote=198.51.100.10`,
		`msg="New WebSocket connection" username=u remote=10.0.0.7`,
		`msg="Rejected WebSocket request" remote=198.51.100.9 status=429 reason=rate_limited`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s", want)
		}
	}
	if strings.Contains(logs, "remote=192.0.2.1") {
		t.Error("a forged X-Forwarded-For entry reached the logs as the client address")
	}
	if n := td.d.stats.Rejected[rejectRateLimited].Load(); n != 2 {
		t.Fatalf("Rejected[rate_limited] = %d, want 2", n)
	}
}

func TestMaxConnectionsPerUserRefusesWith429AndRecoversWhenOneCloses(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{"MAX_CONNECTIONS_PER_USER": "2"})
	first := td.dial("alice")
	_ = td.dial("alice")

	got := tryDial(t, td.wsURL+"?username=alice", nil)
	if got.status != http.StatusTooManyRequests || got.retryAfter != "10" ||
		!strings.Contains(got.line, "MAX_CONNECTIONS_PER_USER") || !strings.Contains(got.line, `"alice" already has 2 connections`) {
		t.Fatalf("alice's third connection: %+v, want 429, Retry-After 10, a line naming alice and MAX_CONNECTIONS_PER_USER", got)
	}
	if n := td.d.stats.Rejected[rejectUserLimit].Load(); n != 1 {
		t.Fatalf("Rejected[user_limit] = %d, want 1", n)
	}
	// Other users are not affected.
	_ = td.dial("bob")
	_ = td.dial("bob")

	_ = first.Close()
	eventually(t, 5*time.Second, "alice's closed connection unregistered", func() bool { return td.d.hub.connectionCount("alice") == 1 })
	_ = td.dial("alice")
	if got := tryDial(t, td.wsURL+"?username=alice", nil); got.status != http.StatusTooManyRequests {
		t.Fatalf("alice at her limit again: %+v, want 429", got)
	}
	// Refusals hold no slot.
	if slots, conns := td.d.hub.slots.Load(), td.d.hub.connections.Load(); slots != 4 || conns != 4 {
		t.Fatalf("slots = %d, connections = %d; want 4 and 4", slots, conns)
	}
}

func TestMaxConnectionsRefusesWith503AndRecoversWhenOneCloses(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{"MAX_CONNECTIONS": "3"})
	// Failed upgrades give their slot back.
	for range 5 {
		if status, _, err := get(td.baseURL + "/ws?username=x"); err != nil || status != http.StatusBadRequest {
			t.Fatalf("plain GET /ws: %d %v, want 400", status, err)
		}
	}
	if n := td.d.stats.Rejected[rejectUpgradeFailed].Load(); n != 5 {
		t.Fatalf("Rejected[upgrade_failed] = %d, want 5", n)
	}
	a := td.dial("a")
	_ = td.dial("b")
	_ = td.dial("b")

	got := tryDial(t, td.wsURL+"?username=c", nil)
	if got.status != http.StatusServiceUnavailable || got.retryAfter != "5" ||
		!strings.Contains(got.line, "(MAX_CONNECTIONS)") || strings.Contains(got.line, "PER_USER") {
		t.Fatalf("4th connection: %+v, want 503, Retry-After 5, a line naming MAX_CONNECTIONS", got)
	}
	if got := tryDial(t, td.wsURL+"?username=a", nil); got.status != http.StatusServiceUnavailable {
		t.Fatalf("4th connection for a user who has one: %+v, want 503", got)
	}
	if n := td.d.stats.Rejected[rejectInstanceLimit].Load(); n != 2 {
		t.Fatalf("Rejected[instance_limit] = %d, want 2", n)
	}

	_ = a.Close()
	eventually(t, 5*time.Second, "a's connection unregistered", func() bool { return td.d.hub.connectionCount("a") == 0 })
	_ = td.dial("c")
	if got := tryDial(t, td.wsURL+"?username=d", nil); got.status != http.StatusServiceUnavailable {
		t.Fatalf("instance full again: %+v, want 503", got)
	}
}

// dialAll dials the /ws URLs all at once, url i with headers[i] when
// headers is not nil, and returns the HTTP status of each: 101 for an open
// WebSocket (closed at cleanup), 0 when no answer came within 20 s.
func dialAll(t *testing.T, urls []string, headers []http.Header) []int {
	t.Helper()
	dialer := websocket.Dialer{HandshakeTimeout: 20 * time.Second}
	statuses := make([]int, len(urls))
	conns := make([]*websocket.Conn, len(urls))
	var wg sync.WaitGroup
	for i, url := range urls {
		var header http.Header
		if headers != nil {
			header = headers[i]
		}
		wg.Go(func() {
			conn, resp, err := dialer.Dial(url, header)
			switch {
			case err == nil:
				conns[i], statuses[i] = conn, http.StatusSwitchingProtocols
			case resp != nil:
				statuses[i] = resp.StatusCode
			}
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
	})
	return statuses
}

// countStatuses counts each status in statuses.
func countStatuses(statuses []int) map[int]int {
	n := map[int]int{}
	for _, s := range statuses {
		n[s]++
	}
	return n
}

func TestConcurrentDialsCannotOvershootTheConnectionLimits(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{"MAX_CONNECTIONS": "8", "MAX_CONNECTIONS_PER_USER": "3", "LOG_LEVEL": "warn"})
	// Upgrades under way hold their slot: however many dials race, alice
	// gets exactly 3 connections and the instance exactly 8.
	urls := make([]string, 30)
	for i := range urls {
		urls[i] = td.wsURL + "?username=alice"
	}
	got := countStatuses(dialAll(t, urls, nil))
	if got[http.StatusSwitchingProtocols] != 3 || got[http.StatusTooManyRequests] != 27 {
		t.Fatalf("30 concurrent dials for alice: %v, want 3 × 101 and 27 × 429", got)
	}
	for i := range urls {
		urls[i] = td.wsURL + "?username=user" + strconv.Itoa(i)
	}
	got = countStatuses(dialAll(t, urls, nil))
	if got[http.StatusSwitchingProtocols] != 5 || got[http.StatusServiceUnavailable] != 25 {
		t.Fatalf("30 concurrent dials for other users with 3 of 8 slots taken: %v, want 5 × 101 and 25 × 503", got)
	}
	eventually(t, 5*time.Second, "accepted connections registered", func() bool { return td.d.hub.connections.Load() == 8 })
	if slots, alice := td.d.hub.slots.Load(), td.d.hub.connectionCount("alice"); slots != 8 || alice != 3 {
		t.Fatalf("slots %d (want 8), alice %d (want 3)", slots, alice)
	}
}

// withSeedLimits is env plus the daemon's own defaults for the connection
// limits and TRUSTED_PROXIES, which testEnv relaxes: an empty value is an
// unset variable.
func withSeedLimits(env map[string]string) map[string]string {
	vars := map[string]string{
		"MAX_CONNECTIONS": "", "MAX_CONNECTIONS_PER_USER": "",
		"CONNECT_RATE_PER_IP": "", "CONNECT_BURST_PER_IP": "", "TRUSTED_PROXIES": "",
	}
	maps.Copy(vars, env)
	return vars
}

// requireSeedLimits fails t unless td runs with the limits and trusted
// proxies of an empty environment.
func requireSeedLimits(t *testing.T, td *testDaemon) {
	t.Helper()
	seed, err := loadConfig(envOf(nil))
	if err != nil {
		t.Fatalf("config of an empty environment: %v", err)
	}
	got := td.d.cfg
	if got.MaxConnections != seed.MaxConnections || got.MaxConnectionsPerUser != seed.MaxConnectionsPerUser ||
		got.ConnectRatePerIP != seed.ConnectRatePerIP || got.ConnectBurstPerIP != seed.ConnectBurstPerIP ||
		!slices.Equal(got.TrustedProxies, seed.TrustedProxies) {
		t.Fatalf("daemon runs with MAX_CONNECTIONS %d, per user %d, rate %g, burst %d, proxies %v; want the defaults %d, %d, %g, %d, %v",
			got.MaxConnections, got.MaxConnectionsPerUser, got.ConnectRatePerIP, got.ConnectBurstPerIP, got.TrustedProxies,
			seed.MaxConnections, seed.MaxConnectionsPerUser, seed.ConnectRatePerIP, seed.ConnectBurstPerIP, seed.TrustedProxies)
	}
}

// spreadUsers returns n /ws URLs on base for the usernames prefix0,
// prefix1, …, 20 URLs each: under the default MAX_CONNECTIONS_PER_USER.
func spreadUsers(base, prefix string, n int) []string {
	urls := make([]string, n)
	for i := range urls {
		urls[i] = fmt.Sprintf("%s?username=%s%d", base, prefix, i/20)
	}
	return urls
}

func TestDefaultLimitsAccept2000LoopbackClientsConnectingAtOnce(t *testing.T) {
	// The quick start: protected mode, every client on this machine.
	td := startDaemon(t, startRedis(t), withSeedLimits(map[string]string{"LOG_LEVEL": "warn"}))
	requireSeedLimits(t, td)
	if td.d.cfg.AuthMode != authLoopback {
		t.Fatalf("AuthMode = %q, want protected mode", td.d.cfg.AuthMode)
	}
	const clients = 2000
	got := countStatuses(dialAll(t, spreadUsers(td.wsURL, "user", clients), nil))
	if got[http.StatusSwitchingProtocols] != clients {
		t.Fatalf("%d loopback clients at once: %v, want %d × 101", clients, got, clients)
	}
	eventually(t, 10*time.Second, "all connections registered", func() bool { return td.d.hub.connections.Load() == clients })
	if n := td.d.stats.ConnectionsRejected.Load(); n != 0 {
		t.Fatalf("%d requests rejected", n)
	}
}

// admittedByBucket checks that a fresh per-address bucket admitted what a
// token bucket can: its whole burst, plus at most what refilled in elapsed.
func admittedByBucket(t *testing.T, cfg Config, admitted int, elapsed time.Duration) {
	t.Helper()
	most := cfg.ConnectBurstPerIP + int(math.Ceil(cfg.ConnectRatePerIP*elapsed.Seconds())) + 1
	if admitted < cfg.ConnectBurstPerIP || admitted > most {
		t.Fatalf("one address admitted %d requests in %v; a bucket of %d at %g/s admits %d to %d",
			admitted, elapsed.Round(time.Millisecond), cfg.ConnectBurstPerIP, cfg.ConnectRatePerIP, cfg.ConnectBurstPerIP, most)
	}
}

func TestForwardedForFromAnUntrustedPeerDoesNotEscapeItsBucket(t *testing.T) {
	td := startDaemon(t, startRedis(t), withSeedLimits(map[string]string{"AUTH_MODE": "none", "LOG_LEVEL": "info"}))
	requireSeedLimits(t, td)
	cfg := td.d.cfg
	peer := frontFor(t, td, "203.0.113.5:4000")

	// Three bursts' worth of requests from one address outside
	// TRUSTED_PROXIES, whose X-Forwarded-For names other clients: loopback
	// ones (not limited per address) and others (with buckets of their own).
	n := 3 * cfg.ConnectBurstPerIP
	urls, headers := spreadUsers(peer, "user", n), make([]http.Header, n)
	for i := range headers {
		switch i % 4 {
		case 0:
			headers[i] = xff("127.0.0.1")
		case 1:
			headers[i] = xff("::1")
		case 2:
			headers[i] = xff(fmt.Sprintf("198.51.100.%d", i%250+1))
		default:
			headers[i] = http.Header{"X-Forwarded-For": {"127.0.0.1"}, "X-Real-Ip": {"127.0.0.1"}, "Forwarded": {"for=127.0.0.1"}}
		}
	}
	start := time.Now()
	got := countStatuses(dialAll(t, urls, headers))
	elapsed := time.Since(start)
	if got[http.StatusSwitchingProtocols]+got[http.StatusTooManyRequests] != n || got[http.StatusTooManyRequests] == 0 {
		t.Fatalf("%d requests from 203.0.113.5 in %v: %v, want 101s then 429s", n, elapsed, got)
	}
	admittedByBucket(t, cfg, got[http.StatusSwitchingProtocols], elapsed)

	// Only the peer's bucket was touched, and only the peer was logged.
	l := td.d.server.addrLimiter
	l.mu.Lock()
	keys := slices.Collect(maps.Keys(l.buckets))
	l.mu.Unlock()
	if len(keys) != 1 || keys[0] != netip.MustParseAddr("203.0.113.5") {
		t.Fatalf("buckets for %v, want only 203.0.113.5's", keys)
	}
	logs := td.logs.String()
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, `msg="New WebSocket connection"`) && !strings.HasSuffix(line, " remote=203.0.113.5") {
			t.Fatalf("a connection logged with another address than the peer's: %s", line)
		}
	}
	if !strings.Contains(logs, "X-Forwarded-For ignored") || !strings.Contains(logs, "peer=203.0.113.5") {
		t.Fatal("no warning that the peer's X-Forwarded-For is ignored")
	}

	// A client on this machine is not held back by it.
	dialWS(t, td.wsURL+"?username=local", nil)
	eventually(t, 5*time.Second, "local client registered", func() bool { return td.d.hub.connectionCount("local") == 1 })

	// With TRUSTED_PROXIES=none, a proxy on this host that forwards for
	// clients elsewhere is one address: its header is not believed, and
	// does not make it a local client either.
	none := startDaemon(t, td.redis, withSeedLimits(map[string]string{
		"AUTH_MODE": "none", "TRUSTED_PROXIES": "none", "CONNECT_RATE_PER_IP": "0.01", "CONNECT_BURST_PER_IP": "2",
	}))
	for _, addr := range []string{"198.51.100.1", "198.51.100.2"} {
		dialWS(t, none.wsURL+"?username=u", xff(addr))
	}
	if got := tryDial(t, none.wsURL+"?username=u", xff("198.51.100.3")); got.status != http.StatusTooManyRequests {
		t.Fatalf("third client of a distrusted local proxy: %+v, want 429", got)
	}
	dialWS(t, none.wsURL+"?username=u", xff("127.0.0.1"))
	dialWS(t, none.wsURL+"?username=u", nil)
}

func TestProtectedModeAcceptsOnlyLoopbackClients(t *testing.T) {
	r := startRedis(t)
	td := startDaemon(t, r, nil)
	if td.d.cfg.AuthMode != authLoopback {
		t.Fatalf("AuthMode = %q without AUTH_MODE or JWT_*, want %q", td.d.cfg.AuthMode, authLoopback)
	}
	remote := frontFor(t, td, "203.0.113.5:4000")

	refusals := []struct {
		name   string
		url    string
		header http.Header
	}{
		{"non-loopback peer", remote + "?username=u", nil},
		{"non-loopback peer, no username", remote, nil},
		{"X-Forwarded-For", td.wsURL + "?username=u", xff("203.0.113.5")},
		{"X-Forwarded-For chain", td.wsURL + "?username=u", xff("127.0.0.1, 203.0.113.5")},
		{"Forwarded", td.wsURL + "?username=u", http.Header{"Forwarded": {"for=203.0.113.5;proto=https"}}},
		{"Forwarded IPv6", td.wsURL + "?username=u", http.Header{"Forwarded": {`for="[2001:db8::7]:4711"`}}},
		{"X-Real-IP", td.wsURL + "?username=u", http.Header{"X-Real-Ip": {"203.0.113.5"}}},
	}
	for _, tc := range refusals {
		got := tryDial(t, tc.url, tc.header)
		if got.status != http.StatusForbidden || !strings.Contains(got.line, "protected mode") || !strings.Contains(got.line, "JWT_SECRET") {
			t.Errorf("%s: %+v, want 403 with a line about protected mode and how to leave it", tc.name, got)
		}
	}
	if n := td.d.stats.Rejected[rejectProtectedMode].Load(); n != uint64(len(refusals)) {
		t.Fatalf("Rejected[protected_mode] = %d, want %d", n, len(refusals))
	}

	// A proxy on this host forwarding for a local client, and a local
	// client, are served.
	td.waitReady()
	local := dialWS(t, td.wsURL+"?username=u", xff("127.0.0.1"))
	forwarded := dialWS(t, td.wsURL+"?username=u", http.Header{"Forwarded": {`for="[::1]:5000"`}})
	eventually(t, 5*time.Second, "local clients registered", func() bool { return td.d.hub.connectionCount("u") == 2 })
	td.publish("u", `{"type":"local"}`)
	for _, conn := range []*websocket.Conn{local, forwarded} {
		if got := readText(t, conn, 5*time.Second); got != `{"type":"local"}` {
			t.Fatalf("local client got %s", got)
		}
	}

	// AUTH_MODE=none serves the non-loopback peer.
	open := startDaemon(t, r, map[string]string{"AUTH_MODE": "none"})
	open.waitReady()
	conn := dialWS(t, frontFor(t, open, "203.0.113.5:4000")+"?username=u", nil)
	eventually(t, 5*time.Second, "remote client registered", func() bool { return open.d.hub.connectionCount("u") == 1 })
	open.publish("u", `{"type":"remote"}`)
	if got := readText(t, conn, 5*time.Second); got != `{"type":"remote"}` {
		t.Fatalf("remote client got %s", got)
	}
	if !strings.Contains(open.logs.String(), `msg="New WebSocket connection" username=u remote=203.0.113.5`) {
		t.Fatal("remote client's connection not logged with its address")
	}
	if n := open.d.stats.ConnectionsRejected.Load(); n != 0 {
		t.Fatalf("AUTH_MODE=none rejected %d requests", n)
	}
}

func TestForwardedHeaderFromAnUntrustedPeerIsWarnedAboutOnce(t *testing.T) {
	r := startRedis(t)
	const warning = "X-Forwarded-For ignored: the peer is not in TRUSTED_PROXIES"

	// By default only loopback peers are trusted: a proxy elsewhere is not.
	td := startDaemon(t, r, map[string]string{"AUTH_MODE": "none"})
	remote := frontFor(t, td, "192.0.2.4:4000") + "?username=u"
	dialWS(t, remote, nil)
	eventually(t, 5*time.Second, "connection registered", func() bool { return td.d.hub.connectionCount("u") == 1 })
	if n := countLines(td.logs.String(), warning); n != 0 {
		t.Fatalf("warned %d times without any X-Forwarded-For", n)
	}
	for i := range 4 {
		dialWS(t, remote, xff("198.51.100."+strconv.Itoa(i+1)))
	}
	eventually(t, 5*time.Second, "connections registered", func() bool { return td.d.hub.connectionCount("u") == 5 })
	logs := td.logs.String()
	if n := countLines(logs, warning); n != 1 {
		t.Fatalf("warned %d times, want once:\n%s", n, logs)
	}
	if !strings.Contains(logs, "peer=192.0.2.4") {
		t.Fatal("warning does not name the peer")
	}
	// The header was ignored: every connection is the peer's.
	if n := countLines(logs, `msg="New WebSocket connection" username=u remote=192.0.2.4`); n != 5 {
		t.Fatalf("%d connections logged with remote=192.0.2.4, want 5", n)
	}

	// From a loopback peer (a proxy on this host), the header is used and
	// nothing is warned.
	local := startDaemon(t, r, map[string]string{"AUTH_MODE": "none"})
	dialWS(t, local.wsURL+"?username=u", xff("198.51.100.1"))
	eventually(t, 5*time.Second, "connection registered", func() bool { return local.d.hub.connectionCount("u") == 1 })
	if logs := local.logs.String(); strings.Contains(logs, warning) ||
		!strings.Contains(logs, `msg="New WebSocket connection" username=u remote=198.51.100.1`) {
		t.Fatalf("loopback proxy: logs\n%s\nwant remote=198.51.100.1 and no warning", logs)
	}

	// TRUSTED_PROXIES=none believes no one, loopback included.
	none := startDaemon(t, r, map[string]string{"AUTH_MODE": "none", "TRUSTED_PROXIES": "none"})
	dialWS(t, none.wsURL+"?username=u", xff("198.51.100.1"))
	eventually(t, 5*time.Second, "connection registered", func() bool { return none.d.hub.connectionCount("u") == 1 })
	if logs := none.logs.String(); countLines(logs, warning) != 1 || !strings.Contains(logs, "peer=127.0.0.1") ||
		!strings.Contains(logs, `msg="New WebSocket connection" username=u remote=127.0.0.1`) {
		t.Fatalf("TRUSTED_PROXIES=none: logs\n%s\nwant one warning naming peer=127.0.0.1 and remote=127.0.0.1", logs)
	}
}

func TestClientAddrBelievesOnlyTrustedProxies(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	cases := []struct {
		name    string
		peer    string
		xff     []string
		trusted []netip.Prefix
		want    string
	}{
		{"no proxies trusted", "127.0.0.1:5000", []string{"198.51.100.9"}, nil, "127.0.0.1"},
		{"untrusted peer", "192.0.2.4:5000", []string{"198.51.100.9"}, trusted, "192.0.2.4"},
		{"trusted peer without header", "10.0.0.1:5000", nil, trusted, "10.0.0.1"},
		{"trusted peer", "10.0.0.1:5000", []string{"198.51.100.9"}, trusted, "198.51.100.9"},
		{"spaces", "10.0.0.1:5000", []string{"  198.51.100.9 ,  "}, trusted, "198.51.100.9"},
		{"chain of trusted proxies", "10.0.0.1:5000", []string{"198.51.100.9, 10.0.0.2, 10.0.0.3"}, trusted, "198.51.100.9"},
		{"forged leftmost entries", "10.0.0.1:5000", []string{"1.2.3.4, 5.6.7.8, 198.51.100.9"}, trusted, "198.51.100.9"},
		{"forged entry behind trusted hops", "10.0.0.1:5000", []string{"1.2.3.4, 198.51.100.9, 10.0.0.2"}, trusted, "198.51.100.9"},
		{"several header lines", "10.0.0.1:5000", []string{"1.2.3.4", "198.51.100.9"}, trusted, "198.51.100.9"},
		{"every hop trusted", "10.0.0.1:5000", []string{"10.0.0.3, 10.0.0.2"}, trusted, "10.0.0.3"},
		{"malformed last entry", "10.0.0.1:5000", []string{"198.51.100.9, garbage"}, trusted, "10.0.0.1"},
		{"malformed entry behind a trusted hop", "10.0.0.1:5000", []string{"198.51.100.9, bad, 10.0.0.2"}, trusted, "10.0.0.2"},
		{"entry with a port is malformed", "10.0.0.1:5000", []string{"198.51.100.9:1234"}, trusted, "10.0.0.1"},
		{"IPv6 peer", "[2001:db8::1]:443", []string{"198.51.100.9"}, trusted, "2001:db8::1"},
		{"IPv6 trusted proxy", "[fd00::1]:443", []string{"2001:db8::5"}, trusted, "2001:db8::5"},
		{"IPv4-mapped peer is trusted as IPv4", "[::ffff:10.0.0.1]:80", []string{"198.51.100.9"}, trusted, "198.51.100.9"},
		{"IPv4-mapped untrusted peer", "[::ffff:192.0.2.4]:80", []string{"198.51.100.9"}, trusted, "192.0.2.4"},
		{"IPv4-mapped entry", "10.0.0.1:5000", []string{"::ffff:198.51.100.9"}, trusted, "198.51.100.9"},
		{"IPv4-mapped trusted entry", "10.0.0.1:5000", []string{"198.51.100.9, ::ffff:10.0.0.2"}, trusted, "198.51.100.9"},
		{"default: loopback proxy", "127.0.0.1:5000", []string{"198.51.100.9"}, defaultTrustedProxies, "198.51.100.9"},
		{"default: IPv6 loopback proxy", "[::1]:5000", []string{"2001:db8::5"}, defaultTrustedProxies, "2001:db8::5"},
		{"default: loopback proxy for a local client", "127.0.0.1:5000", []string{"127.0.0.1"}, defaultTrustedProxies, "127.0.0.1"},
		{"default: client's own entry left of the proxy's", "127.0.0.1:5000", []string{"127.0.0.1, 198.51.100.9"}, defaultTrustedProxies, "198.51.100.9"},
		{"default: remote peer is not trusted", "192.0.2.4:5000", []string{"127.0.0.1"}, defaultTrustedProxies, "192.0.2.4"},
		{"default: proxy in a Docker network", "172.18.0.5:5000", []string{"198.51.100.9"}, defaultTrustedProxies, "198.51.100.9"},
		{"default: ingress in a pod network", "10.244.1.7:5000", []string{"198.51.100.9"}, defaultTrustedProxies, "198.51.100.9"},
		{"default: proxy on a LAN", "192.168.1.2:5000", []string{"198.51.100.9"}, defaultTrustedProxies, "198.51.100.9"},
		{"default: IPv6 unique-local proxy", "[fd12::5]:5000", []string{"2001:db8::5"}, defaultTrustedProxies, "2001:db8::5"},
		{"default: public peer just outside 172.16/12", "172.32.0.1:5000", []string{"198.51.100.9"}, defaultTrustedProxies, "172.32.0.1"},
	}
	for _, tc := range cases {
		r := httptest.NewRequest(http.MethodGet, "/ws", nil)
		r.RemoteAddr = tc.peer
		for _, v := range tc.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		if got := clientAddr(r, tc.trusted); got != netip.MustParseAddr(tc.want) {
			t.Errorf("%s: clientAddr = %v, want %s", tc.name, got, tc.want)
		}
	}
}

func TestForwardedForRemoteFindsAnyNonLoopbackClient(t *testing.T) {
	cases := []struct {
		name   string
		header http.Header
		want   string
	}{
		{"no header", http.Header{}, ""},
		{"loopback XFF", xff("127.0.0.1"), ""},
		{"loopback IPv6 XFF", xff("::1"), ""},
		{"IPv4-mapped loopback XFF", xff("::ffff:127.0.0.1"), ""},
		{"remote XFF", xff("203.0.113.5"), "203.0.113.5"},
		{"remote anywhere in the chain", xff("127.0.0.1, 203.0.113.5"), "203.0.113.5"},
		{"second XFF line", http.Header{"X-Forwarded-For": {"127.0.0.1", "203.0.113.5"}}, "203.0.113.5"},
		{"private address is not loopback", xff("10.1.2.3"), "10.1.2.3"},
		{"unparseable XFF", xff("garbage"), "garbage"},
		{"X-Real-IP", http.Header{"X-Real-Ip": {"203.0.113.5"}}, "203.0.113.5"},
		{"loopback X-Real-IP", http.Header{"X-Real-Ip": {"127.0.0.1"}}, ""},
		{"Forwarded", http.Header{"Forwarded": {"for=203.0.113.5"}}, "203.0.113.5"},
		{"Forwarded, case and parameters", http.Header{"Forwarded": {"proto=https;For=203.0.113.5;by=127.0.0.1"}}, "203.0.113.5"},
		{"Forwarded by is not for", http.Header{"Forwarded": {"by=203.0.113.5;for=127.0.0.1"}}, ""},
		{"Forwarded quoted IPv4 with port", http.Header{"Forwarded": {`for="203.0.113.5:4000"`}}, "203.0.113.5"},
		{"Forwarded IPv6 with port", http.Header{"Forwarded": {`for="[2001:db8::7]:4711"`}}, "2001:db8::7"},
		{"Forwarded IPv6 without port", http.Header{"Forwarded": {`for="[2001:db8::7]"`}}, "2001:db8::7"},
		{"Forwarded loopback IPv6", http.Header{"Forwarded": {`for="[::1]:4711"`}}, ""},
		{"Forwarded second element", http.Header{"Forwarded": {"for=127.0.0.1, for=198.51.100.2"}}, "198.51.100.2"},
		{"Forwarded obfuscated identifier", http.Header{"Forwarded": {"for=_hidden"}}, "_hidden"},
		{"Forwarded unknown", http.Header{"Forwarded": {"for=unknown"}}, "unknown"},
	}
	for _, tc := range cases {
		if got := forwardedForRemote(tc.header); got != tc.want {
			t.Errorf("%s: forwardedForRemote(%v) = %q, want %q", tc.name, tc.header, got, tc.want)
		}
	}
}

func TestFromThisHostIsALoopbackPeerForwardingNoRemoteClient(t *testing.T) {
	cases := []struct {
		name   string
		peer   string
		header http.Header
		want   bool
	}{
		{"local client", "127.0.0.1:5000", nil, true},
		{"another loopback address", "127.0.0.8:5000", nil, true},
		{"IPv6 local client", "[::1]:5000", nil, true},
		{"IPv4-mapped loopback peer", "[::ffff:127.0.0.1]:5000", nil, true},
		{"local proxy for a local client", "127.0.0.1:5000", xff("127.0.0.1"), true},
		{"local proxy for a remote client", "127.0.0.1:5000", xff("198.51.100.9"), false},
		{"remote client behind a forged loopback entry", "127.0.0.1:5000", xff("127.0.0.1, 198.51.100.9"), false},
		{"X-Real-IP naming a remote client", "127.0.0.1:5000", http.Header{"X-Real-Ip": {"198.51.100.9"}}, false},
		{"Forwarded naming a remote client", "127.0.0.1:5000", http.Header{"Forwarded": {"for=198.51.100.9"}}, false},
		{"malformed entry", "127.0.0.1:5000", xff("garbage"), false},
		{"remote peer", "192.0.2.4:5000", nil, false},
		{"remote peer claiming to forward for loopback", "192.0.2.4:5000", xff("127.0.0.1"), false},
		{"private peer", "10.0.0.7:5000", nil, false},
	}
	for _, tc := range cases {
		r := httptest.NewRequest(http.MethodGet, "/ws", nil)
		r.RemoteAddr = tc.peer
		maps.Copy(r.Header, tc.header)
		if got := fromThisHost(r); got != tc.want {
			t.Errorf("%s: fromThisHost = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestIPLimiterBucketsPerAddressAndPerIPv6Slash64(t *testing.T) {
	t0 := time.Now()
	l := newIPLimiter(1, 2)
	addr := netip.MustParseAddr
	// Two hosts of one /64 share a bucket.
	for _, a := range []string{"2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff"} {
		if ok, _ := l.allow(addr(a), t0); !ok {
			t.Fatalf("%s refused within the /64's burst", a)
		}
	}
	ok, wait := l.allow(addr("2001:db8:1:2::abcd"), t0)
	if ok {
		t.Fatal("third request of one /64 allowed past a burst of 2")
	}
	if wait <= 0 || wait > time.Second {
		t.Fatalf("wait = %v, want within (0, 1s] at 1 token a second", wait)
	}
	if got := retryAfterSeconds(wait); got != 1 {
		t.Fatalf("retryAfterSeconds(%v) = %d, want 1", wait, got)
	}
	// The wait is honest: the token is there once it has passed.
	if ok, _ := l.allow(addr("2001:db8:1:2::abcd"), t0.Add(wait+time.Millisecond)); !ok {
		t.Fatalf("refused after waiting the %v it was told", wait)
	}
	// The next /64, and IPv4 neighbours, have their own buckets.
	for _, a := range []string{"2001:db8:1:3::1", "2001:db8:1:3::1", "192.0.2.1", "192.0.2.1", "192.0.2.2", "192.0.2.2"} {
		if ok, _ := l.allow(addr(a), t0); !ok {
			t.Fatalf("%s refused although its own bucket is full", a)
		}
	}
	if ok, _ := l.allow(addr("192.0.2.1"), t0); ok {
		t.Fatal("192.0.2.1 allowed past its burst")
	}

	var none *ipLimiter
	if ok, _ := none.allow(addr("192.0.2.1"), t0); !ok {
		t.Fatal("a nil limiter (CONNECT_RATE_PER_IP=0) refused a request")
	}
}

func TestIPLimiterSweepForgetsOnlyRefilledBuckets(t *testing.T) {
	t0 := time.Now()
	addr := netip.MustParseAddr
	fast := newIPLimiter(1, 2)
	fast.lastSweep = t0
	for _, a := range []string{"192.0.2.1", "192.0.2.2", "2001:db8::1"} {
		fast.allow(addr(a), t0)
		fast.allow(addr(a), t0)
	}
	if n := len(fast.buckets); n != 3 {
		t.Fatalf("%d buckets, want 3", n)
	}
	// Before a sweep is due, nothing is forgotten.
	fast.allow(addr("192.0.2.9"), t0.Add(ipLimiterSweepEvery-time.Second))
	if n := len(fast.buckets); n != 4 {
		t.Fatalf("%d buckets before the sweep is due, want 4", n)
	}
	fast.allow(addr("192.0.2.10"), t0.Add(ipLimiterSweepEvery))
	if _, ok := fast.buckets[addr("192.0.2.10")]; !ok || len(fast.buckets) != 1 {
		t.Fatalf("after the sweep: %d buckets, want only the new one", len(fast.buckets))
	}

	// A bucket still refilling is kept: forgetting it would hand the
	// address a full burst again.
	slow := newIPLimiter(0.01, 2)
	slow.lastSweep = t0
	slow.allow(addr("192.0.2.1"), t0)
	slow.allow(addr("192.0.2.1"), t0)
	later := t0.Add(ipLimiterSweepEvery + time.Second)
	slow.allow(addr("192.0.2.2"), later)
	if len(slow.buckets) != 2 {
		t.Fatalf("after the sweep: %d buckets, want the drained one and the new one", len(slow.buckets))
	}
	ok, wait := slow.allow(addr("192.0.2.1"), later)
	if ok {
		t.Fatal("drained address allowed after a sweep")
	}
	// 0.61 of a token is back; the rest takes 39 s at 0.01 a second.
	if after := retryAfterSeconds(wait); wait < 38*time.Second || wait > 40*time.Second || after < 39 || after > 40 {
		t.Fatalf("wait = %v (Retry-After %d), want about 39 s", wait, after)
	}
}

func TestRetryAfterSecondsRoundsUpToAtLeastOne(t *testing.T) {
	for d, want := range map[time.Duration]int{
		-time.Second:            1,
		0:                       1,
		time.Nanosecond:         1,
		999 * time.Millisecond:  1,
		time.Second:             1,
		time.Second + 1:         2,
		2500 * time.Millisecond: 3,
		10 * time.Second:        10,
	} {
		if got := retryAfterSeconds(d); got != want {
			t.Errorf("retryAfterSeconds(%v) = %d, want %d", d, got, want)
		}
	}
}
