package e2e

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"fanout/internal/testproc"
)

// readmeNginxBlock returns the load balancer configuration that README.md
// documents, so that the test runs exactly what users copy.
func readmeNginxBlock(t *testing.T) string {
	t.Helper()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(readme), "```nginx\n")
	block, _, ok2 := strings.Cut(after, "```")
	if !ok || !ok2 {
		t.Fatal("README.md has no nginx block")
	}
	return block
}

// startNginx runs nginx with deploy/nginx.conf, the file production
// uses, listening on a free loopback port with its upstream servers
// pointed at backends; only those addresses, the log and temp paths and
// the worker count change. It returns the port.
func startNginx(t *testing.T, backends []string) int {
	t.Helper()
	bin := testproc.NeedTool(t, "nginx")
	port := testproc.FreePort(t)
	dir := t.TempDir()
	conf := deployNginxConf(t, backends, testproc.Addr(port), dir)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	p := testproc.Start(t, exec.Command(bin, "-p", dir, "-c", confPath, "-g", fmt.Sprintf("daemon off; pid %s/nginx.pid; error_log %s/error.log warn;", dir, dir)))
	testproc.Eventually(t, 10*time.Second, "nginx listening", func() bool {
		if p.Exited() {
			t.Fatalf("nginx exited: %v\n%s", p.Err(), p.Output())
		}
		c, err := net.Dial("tcp", testproc.Addr(port))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return port
}

// deployNginxConf returns deploy/nginx.conf with its upstream servers
// replaced by backends, listening on listen, logging and keeping its temp
// files under dir, with one worker process.
func deployNginxConf(t *testing.T, backends []string, listen, dir string) string {
	t.Helper()
	b, err := os.ReadFile("../deploy/nginx.conf")
	if err != nil {
		t.Fatal(err)
	}
	conf := string(b)
	replace := func(old, new string) {
		t.Helper()
		if strings.Count(conf, old) != 1 {
			t.Fatalf("deploy/nginx.conf: want exactly one %q", old)
		}
		conf = strings.Replace(conf, old, new, 1)
	}
	var servers strings.Builder
	for _, b := range backends {
		fmt.Fprintf(&servers, "        server %s max_fails=0;\n", b)
	}
	replace("        server fanout-1:8084 max_fails=0;\n        server fanout-2:8084 max_fails=0;\n        server fanout-3:8084 max_fails=0;\n", servers.String())
	replace("listen 80 backlog=4096;", "listen "+listen+" backlog=4096;")
	replace("worker_processes auto;", "worker_processes 1;")
	replace("access_log /dev/stdout fanout;", fmt.Sprintf(`access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;`, dir))
	return conf
}

// startInstances starts n ready fanout processes on one Redis with env,
// and returns them with their host:port, nginx's upstream servers.
func startInstances(t *testing.T, redisAddr string, n int, env ...string) ([]*fanout, []string) {
	t.Helper()
	var instances []*fanout
	var backends []string
	for range n {
		f := launchFanout(t, redisAddr, testproc.FreePort(t), env...)
		instances = append(instances, f)
		backends = append(backends, testproc.Addr(f.port))
	}
	for _, f := range instances {
		f.waitReady()
	}
	return instances, backends
}

// totalConnections is the sum of the instances' connections.
func totalConnections(instances []*fanout) int64 {
	var n int64
	for _, f := range instances {
		n += f.stats().Connections
	}
	return n
}

// event returns a small valid event for username with sequence n.
func event(username string, n int) string {
	return fmt.Sprintf(`{"type":"node_completed","run_id":"r:1","username":%q,"counter":%d}`, username, n)
}

func TestBehindTheReadmesNginxEveryInstanceDelivers(t *testing.T) {
	fanoutBinary(t)
	t.Parallel()
	r := testproc.StartRedis(t)
	rdb := r.Client()
	instances, backends := startInstances(t, r.Addr(), 3)
	port := startNginx(t, backends)
	url := fmt.Sprintf("ws://127.0.0.1:%d/ws?username=org_acme", port)

	// least_conn spreads the connections over the instances.
	var conns []*websocket.Conn
	for range 6 {
		conns = append(conns, dialWS(t, url, nil))
	}
	total := func() (n int) {
		for _, f := range instances {
			n += f.connections("org_acme")
		}
		return n
	}
	testproc.Eventually(t, 5*time.Second, "all connections registered", func() bool { return total() == len(conns) })
	for i, f := range instances {
		if f.connections("org_acme") == 0 {
			t.Fatalf("instance %d got no connection through nginx", i)
		}
	}

	// One publish reaches every connection exactly once, whichever
	// instance holds it.
	publish(t, rdb, "org_acme", `{"type":"workflow_started","run_id":"r:1"}`)
	publish(t, rdb, "org_acme", `{"type":"end"}`)
	for i, conn := range conns {
		if got := readText(t, conn, 5*time.Second); got != `{"type":"workflow_started","run_id":"r:1"}` {
			t.Fatalf("conn %d got %q", i, got)
		}
		if got := readText(t, conn, 5*time.Second); got != `{"type":"end"}` {
			t.Fatalf("conn %d got %q, want exactly one copy of the event", i, got)
		}
	}

	// An instance shutting down sends 1001 through nginx, so its clients
	// reconnect, and nginx routes them to the instances left.
	stopping := instances[2]
	held := stopping.connections("org_acme")
	stopping.Signal(t, syscall.SIGTERM)
	var wg sync.WaitGroup
	var closed atomic.Int64
	for _, conn := range conns {
		wg.Go(func() {
			// Connections on the other instances just time out here.
			_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, _, err := conn.ReadMessage(); websocket.IsCloseError(err, websocket.CloseGoingAway) {
				closed.Add(1)
			}
		})
	}
	wg.Wait()
	stopping.WaitExit(t, 15*time.Second)
	if int(closed.Load()) != held {
		t.Fatalf("%d clients saw 1001 through nginx, want the %d the stopped instance held", closed.Load(), held)
	}
	conn := dialWS(t, url, nil)
	testproc.Eventually(t, 5*time.Second, "reconnected", func() bool {
		return instances[0].connections("org_acme")+instances[1].connections("org_acme") == len(conns)-held+1
	})
	publish(t, rdb, "org_acme", `{"type":"after failover"}`)
	if got := readText(t, conn, 5*time.Second); got != `{"type":"after failover"}` {
		t.Fatalf("reconnected client got %q", got)
	}
}

// TestBehindDeployNginx600ClientsGetExactlyTheirOwnEventsSpreadOverTheInstances
// runs deploy/nginx.conf in front of 3 instances: 600 WebSocket clients (200
// users with 3 connections each) are spread by least_conn over all three,
// and each receives its own user's events, all of them, in order, once, and
// nothing else; 60 SSE clients get each event through nginx as it is
// published. In both subscription modes: events are published only once
// every connection is registered on a ready instance.
func TestBehindDeployNginx600ClientsGetExactlyTheirOwnEventsSpreadOverTheInstances(t *testing.T) {
	fanoutBinary(t)
	t.Parallel()
	for _, mode := range []string{"pattern", "user"} {
		t.Run("SUBSCRIBE_MODE="+mode, func(t *testing.T) {
			r := testproc.StartRedis(t)
			rdb := r.Client()
			instances, backends := startInstances(t, r.Addr(), 3, "LOG_LEVEL=warn", "SUBSCRIBE_MODE="+mode)
			proxy := testproc.Addr(startNginx(t, backends))

			const users, connsPerUser, eventsPerUser = 200, 3, 5
			user := func(i int) string { return fmt.Sprintf("deploy%03d", i%users) }
			conns := dialThroughNginx(t, proxy, users*connsPerUser, user)
			testproc.Eventually(t, 10*time.Second, "600 connections registered", func() bool {
				return totalConnections(instances) == int64(len(conns))
			})
			var spread []int64
			for _, f := range instances {
				spread = append(spread, f.stats().Connections)
			}
			t.Logf("connections per instance through nginx: %v", spread)
			for i, f := range instances {
				// least_conn: about 200 each.
				if n := spread[i]; n < 150 {
					t.Errorf("instance %d holds %d of the %d connections through nginx, want at least 150", i, n, len(conns))
				}
				if status := f.readyStatus(); status != http.StatusOK {
					t.Fatalf("instance %d /ready: %d", i, status)
				}
			}

			pipe := rdb.Pipeline()
			for n := 1; n <= eventsPerUser; n++ {
				for u := range users {
					pipe.Publish(t.Context(), "workflow:events:"+user(u), event(user(u), n))
				}
			}
			if _, err := pipe.Exec(t.Context()); err != nil {
				t.Fatalf("publish: %v", err)
			}
			errs := make([]error, len(conns))
			var wg sync.WaitGroup
			for i, conn := range conns {
				wg.Go(func() { errs[i] = readOwnEvents(conn, user(i), eventsPerUser) })
			}
			wg.Wait()
			if failed := slices.DeleteFunc(errs, func(err error) bool { return err == nil }); len(failed) > 0 {
				t.Fatalf("%d of %d clients did not get exactly their own %d events; the first: %v", len(failed), len(conns), eventsPerUser, errors.Join(failed[:min(5, len(failed))]...))
			}

			// Server-Sent Events through the location /events, unbuffered:
			// each event arrives before the next one is published.
			const sseUsers, sseConnsPerUser, sseEvents = 20, 3, 3
			sseUser := func(i int) string { return fmt.Sprintf("deploy-sse%02d", i%sseUsers) }
			client := newSSEClient(t)
			streams := make([]histStream, sseUsers*sseConnsPerUser)
			for i := range streams {
				stream, err := dialSSE(t.Context(), client, "http://"+proxy, url.Values{"username": {sseUser(i)}}, "")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(stream.Close)
				streams[i] = stream
			}
			testproc.Eventually(t, 10*time.Second, "SSE connections registered", func() bool {
				return totalConnections(instances) == int64(len(conns)+len(streams))
			})
			for n := 1; n <= sseEvents; n++ {
				for u := range sseUsers {
					publish(t, rdb, sseUser(u), event(sseUser(u), n))
				}
				sseErrs := make([]error, len(streams))
				for i, stream := range streams {
					wg.Go(func() {
						f, err := stream.NextWithin(5 * time.Second)
						switch {
						case err != nil:
							sseErrs[i] = fmt.Errorf("SSE client %d: event %d: %w", i, n, err)
						case f.Data != event(sseUser(i), n) || !f.HasID:
							sseErrs[i] = fmt.Errorf("SSE client %d of %s got %+v, want event %d with an id", i, sseUser(i), f, n)
						}
					})
				}
				wg.Wait()
				if err := errors.Join(sseErrs...); err != nil {
					t.Fatalf("round %d of SSE through nginx: %v", n, err)
				}
			}
		})
	}
}

// dialThroughNginx opens n WebSockets through the proxy at addr, client i
// as user(i), 32 handshakes at a time, and closes them at cleanup.
func dialThroughNginx(t *testing.T, addr string, n int, user func(int) string) []*websocket.Conn {
	t.Helper()
	conns := make([]*websocket.Conn, n)
	errs := make([]error, n)
	dialer := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	inFlight := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i := range conns {
		inFlight <- struct{}{}
		wg.Go(func() {
			defer func() { <-inFlight }()
			conn, _, err := dialer.Dial(fmt.Sprintf("ws://%s/ws?username=%s", addr, user(i)), nil)
			conns[i], errs[i] = conn, err
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, conn := range conns {
			if conn != nil {
				_ = conn.Close()
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("dial through nginx: %v", err)
	}
	return conns
}

// readOwnEvents reads events 1 to count of username from conn, in order,
// and then checks that nothing else comes.
func readOwnEvents(conn *websocket.Conn, username string, count int) error {
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for n := 1; n <= count; n++ {
		_, data, err := conn.ReadMessage()
		if err != nil {
			return fmt.Errorf("%s: event %d: %w", username, n, err)
		}
		if want := event(username, n); string(data) != want {
			return fmt.Errorf("%s: got %s, want %s", username, data, want)
		}
	}
	_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, data, err := conn.ReadMessage(); err == nil {
		return fmt.Errorf("%s: got %s after its %d events, want nothing more", username, data, count)
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		return fmt.Errorf("%s: after its %d events: %w", username, count, err)
	}
	return nil
}

// seedLimitVars are the connection limits and TRUSTED_PROXIES, which
// fanoutEnv relaxes or a test's environment might set.
var seedLimitVars = []string{"MAX_CONNECTIONS", "MAX_CONNECTIONS_PER_USER", "CONNECT_RATE_PER_IP", "CONNECT_BURST_PER_IP", "TRUSTED_PROXIES"}

// startWithSeedLimits starts a fanout process on redisAddr with env and
// the daemon's own defaults for seedLimitVars: none of them is in its
// environment.
func startWithSeedLimits(t *testing.T, redisAddr string, env ...string) *fanout {
	t.Helper()
	port, adminPort := testproc.FreePort(t), testproc.FreePort(t)
	var vars []string
	for _, kv := range append(append(os.Environ(), fanoutEnv(redisAddr, port, adminPort)...), env...) {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(seedLimitVars, name) {
			vars = append(vars, kv)
		}
	}
	cmd := exec.Command(fanoutBinary(t))
	cmd.Env = vars
	f := startFanoutCmd(t, cmd, port, adminPort)
	f.waitReady()
	return f
}

// readmeDefault returns the default README's configuration table gives
// variable name, as a number.
func readmeDefault(t *testing.T, name string) float64 {
	t.Helper()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?m)^\\| `" + name + "` \\| `([0-9.]+)` \\|").FindSubmatch(readme)
	if m == nil {
		t.Fatalf("README.md's configuration table has no numeric default for %s", name)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// dialAll dials the /ws URLs all at once, url i with headers[i] when
// headers is not nil, and returns the HTTP status of each: 101 for an open
// WebSocket (closed at cleanup), 0 when no answer came within 20 s.
func dialAll(t *testing.T, urls []string, headers []http.Header) []int {
	t.Helper()
	dialer := websocket.Dialer{HandshakeTimeout: 20 * time.Second}
	statuses := make([]int, len(urls))
	conns := make([]*websocket.Conn, len(urls))
	var firstErr atomic.Value
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
			default:
				firstErr.CompareAndSwap(nil, err.Error())
			}
		})
	}
	wg.Wait()
	if err := firstErr.Load(); err != nil {
		t.Logf("a dial got no HTTP answer: %v", err)
	}
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

// spreadUsers returns n /ws URLs on base for the usernames prefix0,
// prefix1, …, 20 URLs each: under the default MAX_CONNECTIONS_PER_USER.
func spreadUsers(base, prefix string, n int) []string {
	urls := make([]string, n)
	for i := range urls {
		urls[i] = fmt.Sprintf("%s?username=%s%d", base, prefix, i/20)
	}
	return urls
}

// xff is a header carrying X-Forwarded-For.
func xff(addrs string) http.Header {
	return http.Header{"X-Forwarded-For": {addrs}}
}

func TestDefaultLimitsAccept2000ClientsConnectingAtOnceThroughTheReadmesNginx(t *testing.T) {
	fanoutBinary(t)
	t.Parallel()
	// After a restart every client reconnects through the same nginx.
	f := startWithSeedLimits(t, testproc.StartRedis(t).Addr(), "LOG_LEVEL=warn")
	port := startNginx(t, []string{testproc.Addr(f.port)})
	const clients = 2000
	got := countStatuses(dialAll(t, spreadUsers(fmt.Sprintf("ws://127.0.0.1:%d/ws", port), "user", clients), nil))
	if got[http.StatusSwitchingProtocols] != clients {
		t.Fatalf("%d clients at once through nginx: %v, want %d × 101", clients, got, clients)
	}
	testproc.Eventually(t, 10*time.Second, "all connections registered", func() bool { return f.stats().Connections == clients })
	if n := f.counter("connections_rejected"); n != 0 {
		t.Fatalf("%d requests rejected", n)
	}
}

func TestBehindTheReadmesNginxOneAddressOverItsBudgetGets429WhileOthersConnect(t *testing.T) {
	fanoutBinary(t)
	t.Parallel()
	f := startWithSeedLimits(t, testproc.StartRedis(t).Addr(), "AUTH_MODE=none", "LOG_LEVEL=info")
	burst := int(readmeDefault(t, "CONNECT_BURST_PER_IP"))
	rate := readmeDefault(t, "CONNECT_RATE_PER_IP")
	port := startNginx(t, []string{testproc.Addr(f.port)})
	base := fmt.Sprintf("ws://127.0.0.1:%d/ws", port)
	// nginx appends its client's address, this host's, to the header the
	// test sends: the daemon sees "198.51.100.9, 127.0.0.1" from nginx and
	// takes 198.51.100.9 for the client, as it would a browser elsewhere.
	forwardedFor := func(addr string, n int) []http.Header {
		headers := make([]http.Header, n)
		for i := range headers {
			headers[i] = xff(addr)
		}
		return headers
	}

	n := 3 * burst
	start := time.Now()
	got := countStatuses(dialAll(t, spreadUsers(base, "user", n), forwardedFor("198.51.100.9", n)))
	elapsed := time.Since(start)
	if got[http.StatusSwitchingProtocols]+got[http.StatusTooManyRequests] != n || got[http.StatusTooManyRequests] == 0 {
		t.Fatalf("%d requests for 198.51.100.9 in %v: %v, want 101s then 429s", n, elapsed, got)
	}
	// A fresh per-address bucket admits its whole burst, plus at most what
	// refilled meanwhile.
	admitted := got[http.StatusSwitchingProtocols]
	if most := burst + int(math.Ceil(rate*elapsed.Seconds())) + 1; admitted < burst || admitted > most {
		t.Fatalf("one address admitted %d requests in %v; a bucket of %d at %g/s admits %d to %d",
			admitted, elapsed.Round(time.Millisecond), burst, rate, burst, most)
	}
	if !strings.Contains(f.logs(), `msg="Rejected WebSocket request" remote=198.51.100.9 status=429 reason=rate_limited`) {
		t.Fatal("refusal not logged with the forwarded address")
	}

	// Other addresses behind the same nginx, and its clients on this host,
	// are not affected.
	const others = 100
	urls := spreadUsers(base, "other", others)
	headers := make([]http.Header, others)
	for i := range headers {
		if i%10 != 0 {
			headers[i] = xff(fmt.Sprintf("198.51.100.%d", 10+i))
		}
	}
	if got := countStatuses(dialAll(t, urls, headers)); got[http.StatusSwitchingProtocols] != others {
		t.Fatalf("%d other clients through nginx: %v, want %d × 101", others, got, others)
	}
	// Clients on this host take no per-address bucket: three bursts' worth
	// of them at once all connect.
	if got := countStatuses(dialAll(t, spreadUsers(base, "local", n), nil)); got[http.StatusSwitchingProtocols] != n {
		t.Fatalf("%d clients on this host through nginx at once: %v, want %d × 101: they took a per-address bucket", n, got, n)
	}
}

// TestReadmesNginxBlockIsDeployNginxConf keeps README's nginx block (the
// seed's upstream on localhost:8084-8086) and deploy/nginx.conf, which the
// tests run, the same configuration.
func TestReadmesNginxBlockIsDeployNginxConf(t *testing.T) {
	t.Parallel()
	block := readmeNginxBlock(t)
	conf := deployNginxConf(t, []string{"localhost:8084", "localhost:8085", "localhost:8086"}, "80", t.TempDir())
	normalize := func(s string) []string {
		var lines []string
		for _, l := range strings.Split(s, "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				lines = append(lines, l)
			}
		}
		return lines
	}
	have := strings.Join(normalize(conf), "\n")
	for _, want := range []string{
		strings.Join(normalize(block[:strings.Index(block, "server {")]), "\n"),
		strings.Join(normalize(block[strings.Index(block, "server {")+len("server {"):]), "\n"),
	} {
		if !strings.Contains(have, want) {
			t.Fatalf("README's nginx block is not deploy/nginx.conf's:\n%s\n\nnot found in\n%s", want, have)
		}
	}
}
