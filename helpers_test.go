package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"fanout/internal/testproc"
)

func TestMain(m *testing.M) {
	// The re-executed test binary plays the daemon in the process tests.
	if os.Getenv("FANOUT_TEST_RUN_MAIN") == "1" {
		// The command line is the one after the test binary's own flags.
		os.Args = slices.DeleteFunc(os.Args, func(arg string) bool { return strings.HasPrefix(arg, "-test.") })
		main()
		return
	}
	flag.Parse()
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if testing.Short() && !explicit {
		// The inner loop: the slow tests here mostly wait on timers
		// (leases, grace periods, probes), so four run at a time. The
		// full run keeps go test's default, one per core: there the race
		// detector and e2e's processes keep the cores busy.
		_ = flag.Set("test.parallel", "4")
	}
	goleak.VerifyTestMain(m)
}

// redisServer is a real redis-server on a free loopback port, owned by one
// test and stopped by its cleanup: testproc's, with the names the root
// tests use.
type redisServer struct {
	*testproc.Redis
}

// startRedis starts a redis-server for tb on a free loopback port.
func startRedis(tb testing.TB, extraArgs ...string) *redisServer {
	tb.Helper()
	return &redisServer{testproc.StartRedis(tb, extraArgs...)}
}

// redisAt returns a redisServer for a free port with nothing running on it
// yet; start brings it up.
func redisAt(tb testing.TB) *redisServer {
	return &redisServer{testproc.NewRedis(tb, freePort(tb))}
}

func freePort(tb testing.TB) int {
	tb.Helper()
	return testproc.FreePort(tb)
}

func (r *redisServer) addr() string { return r.Addr() }

// start (re)starts redis-server on the same port.
func (r *redisServer) start() { r.Restart() }

// kill stops redis-server at once, as a crash would.
func (r *redisServer) kill() { r.Kill() }

// client returns a go-redis client for publishing in tests.
func (r *redisServer) client() *redis.Client { return r.Client() }

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer = testproc.Buffer

// testDaemon is the whole daemon, wired as main wires it, serving on a
// loopback port against a real Redis.
type testDaemon struct {
	t       *testing.T
	d       *daemon
	redis   *redisServer
	pub     *redis.Client
	baseURL string
	wsURL   string
	// adminURL is the admin listener's base URL ("" when it is off).
	adminURL string
	logs     *syncBuffer
	cancel   context.CancelFunc
	done     chan error
}

// testEnv is the environment the test daemons start from: short timings so
// that tests of keepalive and probes run in milliseconds.
func testEnv(r *redisServer) map[string]string {
	return map[string]string{
		"REDIS_HOST":      "127.0.0.1",
		"REDIS_PORT":      strconv.Itoa(r.Port),
		"LOG_LEVEL":       "debug",
		"PROBE_INTERVAL":  "100ms",
		"PROBE_TIMEOUT":   "400ms",
		"REDIS_RETRY_MAX": "300ms",
		// Tests open many connections from 127.0.0.1; the limit tests
		// set their own.
		"CONNECT_RATE_PER_IP":      "0",
		"MAX_CONNECTIONS_PER_USER": "0",
		"ADMIN_ADDR":               "127.0.0.1:0",
	}
}

// probeTimeoutUnderLoad is the PROBE_TIMEOUT (the default) of the tests
// that hold a thousand connections or more and are not about the probe:
// with the tests' 400 ms, the race detector and the rest of the suite on
// 2 cores once kept the subscription's read loop from running for 600 ms,
// the self-probe took that for a dead subscription and resubscribed, and
// the events waiting in it were dropped.
const probeTimeoutUnderLoad = "5s"

// startDaemon runs a daemon for t against r with env overriding testEnv.
func startDaemon(t *testing.T, r *redisServer, env map[string]string) *testDaemon {
	t.Helper()
	return startDaemonOn(t, r, env, "127.0.0.1:0")
}

// startInstances runs n ready daemons on r with env, as instances of one
// deployment, and returns them with their base URLs.
func startInstances(t *testing.T, r *redisServer, n int, env map[string]string) ([]*testDaemon, []string) {
	t.Helper()
	var daemons []*testDaemon
	var bases []string
	for range n {
		td := startDaemon(t, r, env)
		td.waitReady()
		daemons = append(daemons, td)
		bases = append(bases, td.baseURL)
	}
	return daemons, bases
}

// startDaemonOn is startDaemon listening on addr, so that a test can start
// another daemon where a stopped one was.
func startDaemonOn(t *testing.T, r *redisServer, env map[string]string, addr string) *testDaemon {
	t.Helper()
	vars := testEnv(r)
	for k, v := range env {
		vars[k] = v
	}
	cfg, err := loadConfig(envOf(vars))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: cfg.LogLevel}))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	var adminLn net.Listener
	if cfg.AdminAddr != "" {
		if adminLn, err = net.Listen("tcp", cfg.AdminAddr); err != nil {
			t.Fatalf("listen: %v", err)
		}
	}
	d, err := newDaemon(cfg, logger)
	if err != nil {
		t.Fatalf("newDaemon: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	td := &testDaemon{
		t:       t,
		d:       d,
		redis:   r,
		pub:     r.client(),
		baseURL: "http://" + ln.Addr().String(),
		wsURL:   "ws://" + ln.Addr().String() + "/ws",
		logs:    logs,
		cancel:  cancel,
		done:    make(chan error, 1),
	}
	if adminLn != nil {
		td.adminURL = "http://" + adminLn.Addr().String()
	}
	go func() { td.done <- td.d.run(ctx, ln, adminLn) }()
	t.Cleanup(func() {
		td.stop()
		if t.Failed() {
			t.Logf("daemon logs:\n%s", logs.String())
		}
	})
	return td
}

// stop shuts the daemon down and returns what run returned.
func (td *testDaemon) stop() error {
	td.cancel()
	select {
	case err, ok := <-td.done:
		if ok {
			close(td.done)
		}
		return err
	case <-time.After(20 * time.Second):
		td.t.Fatal("daemon did not stop within 20s")
		return nil
	}
}

// waitReady waits until /ready answers 200.
func (td *testDaemon) waitReady() {
	td.t.Helper()
	eventually(td.t, 10*time.Second, "daemon ready", func() bool { return td.readyStatus() == http.StatusOK })
}

// readyStatus returns the status of /ready, or 0 when it cannot be reached.
func (td *testDaemon) readyStatus() int {
	status, _, err := get(td.baseURL + "/ready")
	if err != nil {
		return 0
	}
	return status
}

// get fetches url and returns its status and body.
func get(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// dial opens a WebSocket for username and waits until the hub has it and
// its write right is idle (the handshake's goroutine has handed it off).
func (td *testDaemon) dial(username string) *websocket.Conn {
	td.t.Helper()
	before := td.d.hub.connectionCount(username)
	conn := dialWS(td.t, td.wsURL+"?username="+username, nil)
	eventually(td.t, 5*time.Second, "connection registered", func() bool {
		return td.d.hub.connectionCount(username) > before && td.d.hub.writersIdle(username)
	})
	return conn
}

// writersIdle reports whether no connection of username holds its write
// right: nothing is being written to them.
func (h *Hub) writersIdle(username string) bool {
	s := h.shard(username)
	s.mu.RLock()
	defer s.mu.RUnlock()
	for c := range s.users[username] {
		c.mu.Lock()
		idle := c.writer == writeIdle
		c.mu.Unlock()
		if !idle {
			return false
		}
	}
	return true
}

// dialWS opens a WebSocket and closes it at cleanup.
func dialWS(t *testing.T, url string, header http.Header) *websocket.Conn {
	t.Helper()
	return dialWith(t, websocket.DefaultDialer, url, header)
}

// dialWith is dialWS with dialer.
func dialWith(t *testing.T, dialer *websocket.Dialer, url string, header http.Header) *websocket.Conn {
	t.Helper()
	conn, resp, err := dialer.Dial(url, header)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (HTTP %d)", url, err, status)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// handshake is how a WebSocket dial ended: an open connection (status 101),
// or the HTTP answer the daemon refused it with.
type handshake struct {
	// conn is the open connection, closed at cleanup; nil when refused.
	conn       *websocket.Conn
	status     int
	retryAfter string
	// line is the refusal's body without its final newline.
	line string
}

// tryDial dials url and returns the connection or the refusal. A refusal
// must have a one-line body.
func tryDial(tb testing.TB, url string, header http.Header) handshake {
	tb.Helper()
	conn, resp, err := websocket.DefaultDialer.Dial(url, header)
	if err == nil {
		tb.Cleanup(func() { _ = conn.Close() })
		return handshake{conn: conn, status: http.StatusSwitchingProtocols}
	}
	if resp == nil {
		tb.Fatalf("dial %s: %v, want a WebSocket or an HTTP refusal", url, err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	line := strings.TrimSuffix(string(body), "\n")
	if line == "" || strings.Contains(line, "\n") {
		tb.Fatalf("dial %s: HTTP %d body %q, want one line", url, resp.StatusCode, body)
	}
	return handshake{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), line: line}
}

// publish publishes payload on username's channel.
func (td *testDaemon) publish(username, payload string) {
	td.t.Helper()
	if err := td.pub.Publish(context.Background(), channelPrefix+username, payload).Err(); err != nil {
		td.t.Fatalf("publish: %v", err)
	}
}

// publishPaced publishes payload count times, letting the daemon catch up
// every 4 MiB: Redis drops a subscriber that falls 32 MiB behind, and under
// the race detector the daemon reads far slower than Redis accepts.
func (td *testDaemon) publishPaced(username, payload string, count int) {
	td.t.Helper()
	start := td.d.stats.MessagesReceived.Load()
	every := max(1, (4<<20)/len(payload))
	for i := 1; i <= count; i++ {
		td.publish(username, payload)
		if i%every == 0 || i == count {
			want := start + uint64(i)
			eventually(td.t, 20*time.Second, "daemon caught up with publishes", func() bool {
				return td.d.stats.MessagesReceived.Load() >= want
			})
		}
	}
}

// readText reads the next frame, which must be a text frame, within d.
func readText(t *testing.T, conn *websocket.Conn, d time.Duration) string {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(d))
	typ, data, err := conn.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if typ != websocket.TextMessage {
		t.Fatalf("frame type %d, want text", typ)
	}
	return string(data)
}

// skipShort skips t under -short, saying why it is slow.
func skipShort(t *testing.T, why string) {
	t.Helper()
	if testing.Short() {
		t.Skip("not under -short: " + why)
	}
}

// eventually polls cond until it holds, and fails t once d has passed.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testproc.Eventually(t, d, what, cond)
}

// waitFor polls check until it returns "", and fails t with what it last
// returned once d has passed.
func waitFor(t testing.TB, d time.Duration, what string, check func() string) {
	t.Helper()
	testproc.WaitFor(t, d, what, check)
}

// event returns a small valid event for username with sequence n.
func event(username string, n int) string {
	return fmt.Sprintf(`{"type":"node_completed","run_id":"r:1","username":%q,"counter":%d}`, username, n)
}

// countLines counts the log lines that contain s.
func countLines(logs, s string) int {
	n := 0
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}
