package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"fanout/history"

	"github.com/golang-jwt/jwt/v5"

	"fanout/internal/testproc"
)

// The browser side of the daemon: fanout-client.js, the console page (/)
// and the operator page (/admin/), each driven in headless Chromium by a
// script here. FANOUT_SCREENSHOTS=docs makes the console and operator
// tests save docs/console.png and docs/operator.png (the operator test then
// runs 30 s longer, for a fuller chart).

// needChromium skips t under -short, and fails it otherwise, when the
// browser tests' tools are missing.
func needChromium(t *testing.T) {
	t.Helper()
	testproc.NeedTool(t, "node")
	testproc.NeedTool(t, "chromium")
	if _, err := os.Stat(filepath.Join("node_modules", "playwright-core")); err != nil {
		testproc.Missing(t, "playwright-core (npm, in e2e/)")
	}
}

// e2eCommand is node running a script of this directory, with
// FANOUT_SCREENSHOTS, relative to the module root, made absolute.
func e2eCommand(t *testing.T, script string, args ...string) *exec.Cmd {
	t.Helper()
	needChromium(t)
	cmd := exec.Command("node", append([]string{script}, args...)...)
	cmd.Env = os.Environ()
	if dir := os.Getenv("FANOUT_SCREENSHOTS"); dir != "" {
		if !filepath.IsAbs(dir) {
			dir = filepath.Join("..", dir)
		}
		abs, err := filepath.Abs(dir)
		if err != nil {
			t.Fatal(err)
		}
		cmd.Env = append(cmd.Env, "FANOUT_SCREENSHOTS="+abs)
	}
	return cmd
}

// startE2E runs an e2e/ script.
func startE2E(t *testing.T, script string, args ...string) *testproc.Process {
	t.Helper()
	return testproc.Start(t, e2eCommand(t, script, args...))
}

// waitStep waits for the script to print a line containing s.
func waitStep(t *testing.T, p *testproc.Process, s string) {
	t.Helper()
	select {
	case <-p.Done():
		if !strings.Contains(p.Output(), s) {
			t.Fatalf("the script exited (%v) before %q; it printed:\n%s", p.Err(), s, p.Output())
		}
	default:
		// Chromium's start-up takes seconds on a busy machine.
		p.WaitOutput(t, 30*time.Second, s)
	}
}

// consoleEvent is a workflow event as an engine would publish it.
func consoleEvent(typ, runID string, extra string) string {
	return fmt.Sprintf(`{"type":%q,"run_id":%q,"workflow":"nightly-report",%s}`, typ, runID, extra)
}

func TestConsoleShowsEventsAndReconnectsAfterTheDaemonRestarts(t *testing.T) {
	skipShort(t)
	t.Parallel()
	r := testproc.StartRedis(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testproc.FreePort(t))
	pub := history.NewPublisher(r.Client(), history.Retention{})
	publishKept := func(user, payload string) string {
		t.Helper()
		id, err := pub.Publish(context.Background(), user, []byte(payload))
		if err != nil {
			t.Fatal(err)
		}
		return id
	}

	// Before the page opens: alice's history holds two events.
	earlier := consoleEvent("workflow_completed", "run-5e0a12", `"status":"succeeded","duration_ms":6120`)
	first := consoleEvent("workflow_started", "run-7f3a9c", `"trigger":"schedule","started_at":"2026-11-27T09:00:00Z"`)
	publishKept("alice", earlier)
	firstID := publishKept("alice", first)
	td := startDaemonOn(t, r, map[string]string{"LOG_LEVEL": "info"}, addr)
	td.waitReady()
	// alice's own page acknowledged the first event (read receipts): the
	// console shows it, and acknowledges nothing itself.
	resp, err := http.Post(td.baseURL+"/ack?username=alice", "text/plain", strings.NewReader(`{"id":"`+firstID+`"}`))
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("POST /ack: %v %v", resp, err)
	}
	resp.Body.Close()

	whileDown := consoleEvent("workflow_started", "run-c3e210", `"trigger":"webhook","source":"crm"`)
	afterRestart := consoleEvent("node_completed", "run-7f3a9c", `"node":"fetch-sales","status":"succeeded","duration_ms":1840`)
	batch := []string{
		consoleEvent("node_completed", "run-7f3a9c", `"node":"aggregate","status":"succeeded","duration_ms":5210`),
		consoleEvent("workflow_started", "run-b81d04", `"trigger":"manual","started_by":"alice"`),
		consoleEvent("node_completed", "run-b81d04", `"node":"fetch-sales","status":"failed","error":"upstream timeout after 30s","attempt":1`),
		consoleEvent("node_completed", "run-7f3a9c", `"node":"render-pdf","status":"succeeded","duration_ms":930`),
		consoleEvent("workflow_completed", "run-7f3a9c", `"status":"succeeded","duration_ms":7980,"outputs":{"report":"s3://reports/2026-11-27.pdf","rows":18422}`),
	}
	held := consoleEvent("node_completed", "run-b81d04", `"node":"fetch-sales","status":"succeeded","attempt":2,"duration_ms":2210`)
	// bob has no history when his page opens, and gets no event before
	// the restart: two events come while the daemon is down, one after.
	bobWhileDown := []string{
		consoleEvent("workflow_started", "run-0b0b01", `"trigger":"schedule"`),
		consoleEvent("node_completed", "run-0b0b01", `"node":"extract","status":"succeeded"`),
	}
	bobLive := consoleEvent("workflow_completed", "run-0b0b01", `"status":"succeeded"`)
	spec, err := json.Marshal(map[string]any{
		"url":      td.baseURL + "/",
		"username": "alice",
		"history": []map[string]string{
			{"type": "workflow_completed", "run_id": "run-5e0a12"},
			{"type": "workflow_started", "run_id": "run-7f3a9c"},
		},
		"first":         map[string]string{"type": "workflow_started", "run_id": "run-7f3a9c"},
		"seenID":        firstID,
		"whileDown":     map[string]string{"type": "workflow_started", "run_id": "run-c3e210"},
		"afterRestart":  map[string]string{"type": "node_completed", "run_id": "run-7f3a9c"},
		"total":         4 + len(batch),
		"filter":        "run-b81d04",
		"filterMatches": 2,
		"select":        map[string]string{"type": "workflow_completed", "run_id": "run-7f3a9c"},
		"quiet": map[string]any{
			"url": td.baseURL + "/?username=bob",
			"whileDown": []map[string]string{
				{"type": "workflow_started", "run_id": "run-0b0b01"},
				{"type": "node_completed", "run_id": "run-0b0b01"},
			},
			"live": map[string]string{"type": "workflow_completed", "run_id": "run-0b0b01"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	page := startE2E(t, "console.mjs", string(spec))

	waitStep(t, page, "open")
	testproc.Eventually(t, 5*time.Second, "console connected", func() bool { return td.connectionCount("alice") == 1 })
	waitStep(t, page, "detail ok")
	waitStep(t, page, "quiet open")
	testproc.Eventually(t, 5*time.Second, "bob's console connected", func() bool { return td.connectionCount("bob") == 1 })

	// The same address, the same Redis: a rolling restart, during which a
	// publisher that keeps its events in the history publishes for both.
	if err := td.stop(); err != nil {
		t.Fatalf("run returned %v", err)
	}
	publishKept("alice", whileDown)
	for _, e := range bobWhileDown {
		publishKept("bob", e)
	}
	td2 := startDaemonOn(t, r, map[string]string{"LOG_LEVEL": "info"}, addr)
	waitStep(t, page, "reconnected")
	testproc.Eventually(t, 5*time.Second, "console reconnected", func() bool { return td2.connectionCount("alice") == 1 })
	waitStep(t, page, "quiet reconnected")
	testproc.Eventually(t, 5*time.Second, "bob's console reconnected", func() bool { return td2.connectionCount("bob") == 1 })
	td2.waitReady()
	td2.publish("alice", afterRestart)
	td2.publish("bob", bobLive)
	waitStep(t, page, "shown after restart")
	waitStep(t, page, "quiet ids ")
	for _, e := range batch {
		td2.publish("alice", e)
	}
	waitStep(t, page, "paused")
	td2.publish("alice", held)
	waitStep(t, page, "done")
	page.WaitExit(t, 10*time.Second)

	// Every event once, in order, with its id from the history.
	for _, c := range []struct {
		user, prefix string
		want         int
	}{{"alice", "\nids ", 5 + len(batch)}, {"bob", "\nquiet ids ", 3}} {
		retained, err := history.After(context.Background(), r.Client(), c.user, "", 100)
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, e := range retained {
			want = append(want, e.ID)
		}
		_, shown, _ := strings.Cut(page.Output(), c.prefix)
		shown, _, _ = strings.Cut(shown, "\n")
		if got := strings.Split(shown, ","); !slices.Equal(got, want) || len(want) != c.want {
			t.Fatalf("%s's console listed ids %v, the history has %v (want %d)", c.user, got, want, c.want)
		}
	}
}

func TestOperatorPageShowsConnectionsAndThroughput(t *testing.T) {
	skipShort(t)
	t.Parallel()
	const adminToken = "operator-token-0123456789"
	td := startDaemon(t, testproc.StartRedis(t), map[string]string{"ADMIN_TOKEN": adminToken, "LOG_LEVEL": "info"})
	td.waitReady()
	for _, path := range []string{"/admin/", "/admin/admin.js", "/admin/admin.css"} {
		if status, _, err := get(td.adminURL + path); err != nil || status != http.StatusOK {
			t.Fatalf("GET %s without the token: %d %v, want 200 (it holds no data)", path, status, err)
		}
	}
	users := map[string]int{"alice": 3, "bob": 2, "carol": 1}
	page := startE2E(t, "operator.mjs", td.adminURL, adminToken, "6")
	waitStep(t, page, "token kept")

	for name, n := range users {
		for range n {
			conn := td.dial(name)
			go func() { // read, so that the daemon's queues never fill
				for {
					if _, _, err := conn.ReadMessage(); err != nil {
						return
					}
				}
			}()
		}
	}
	stop := publishWaves(td, []string{"alice", "bob", "carol"})
	t.Cleanup(stop)
	waitStep(t, page, "connections 6")
	waitStep(t, page, "chart drawn")
	timeout := 15 * time.Second
	if os.Getenv("FANOUT_SCREENSHOTS") != "" {
		timeout = 60 * time.Second
	}
	page.WaitOutput(t, timeout, "done")
	page.WaitExit(t, 10*time.Second)
}

// publishWaves publishes to users in the background, at a rate that rises
// and falls over about half a minute, until the returned function is called.
func publishWaves(td *testDaemon, users []string) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		types := []string{"workflow_started", "node_completed", "node_completed", "node_completed", "workflow_completed"}
		start := time.Now()
		for i := 0; ; i++ {
			perTick := 1 + int(3+3*math.Sin(time.Since(start).Seconds()/5))
			for j := range perTick {
				user := users[(i+j)%len(users)]
				payload := consoleEvent(types[(i+j)%len(types)], fmt.Sprintf("run-%04d", i/5), fmt.Sprintf(`"seq":%d`, i))
				_ = td.pub.Publish(ctx, "workflow:events:"+user, payload).Err()
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
	return func() { cancel(); wg.Wait() }
}

// clientHarness is e2e/client.mjs: fanout-client.js in Chromium, in a
// blank page on its own origin, importing the client from the daemon.
type clientHarness struct {
	t     *testing.T
	p     *testproc.Process
	stdin io.WriteCloser
	page  *httptest.Server
}

// startClientHarness serves a blank page (and, on /token, what token
// answers) and opens it with the client imported from daemonURL.
func startClientHarness(t *testing.T, daemonURL string, token http.HandlerFunc) *clientHarness {
	t.Helper()
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" && token != nil {
			token(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, "<!doctype html><title>fanout-client.js test</title>\n")
	}))
	t.Cleanup(page.Close)
	cmd := e2eCommand(t, "client.mjs", page.URL, daemonURL+"/fanout-client.js")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	h := &clientHarness{t: t, stdin: stdin, page: page}
	h.p = testproc.Start(t, cmd)
	waitStep(t, h.p, "ready")
	return h
}

// send writes one command to the harness.
func (h *clientHarness) send(cmd map[string]any) {
	h.t.Helper()
	line, err := json.Marshal(cmd)
	if err != nil {
		h.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := h.stdin.Write(append(line, '\n')); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			h.t.Fatalf("write to client.mjs: %v", err)
		}
	case <-time.After(10 * time.Second):
		h.t.Fatalf("client.mjs did not read %s", line)
	}
}

// connect opens client name with options (and a token function fetching
// from the page's /token when tokenFn).
func (h *clientHarness) connect(name string, options map[string]any, tokenFn bool) {
	h.t.Helper()
	cmd := map[string]any{"cmd": "connect", "name": name, "options": options}
	if tokenFn {
		cmd["tokenURL"] = h.page.URL + "/token"
	}
	h.send(cmd)
}

// sockets returns how many WebSockets client name has opened.
func (h *clientHarness) sockets(name string) int {
	h.t.Helper()
	before := countLines(h.p.Output(), "sockets "+name+" ")
	h.send(map[string]any{"cmd": "sockets", "name": name})
	testproc.Eventually(h.t, 10*time.Second, "socket count", func() bool {
		return countLines(h.p.Output(), "sockets "+name+" ") > before
	})
	lines := strings.Split(h.p.Output(), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		var n int
		if _, err := fmt.Sscanf(lines[i], "sockets "+name+" %d", &n); err == nil {
			return n
		}
	}
	h.t.Fatal("no socket count")
	return 0
}

// exit ends the harness, which must exit 0 (no page errors).
func (h *clientHarness) exit() {
	h.t.Helper()
	h.send(map[string]any{"cmd": "exit"})
	h.p.WaitExit(h.t, 10*time.Second)
}

// fastRetry makes a reconnect loop show within a second.
var fastRetry = map[string]any{"minDelay": 50, "maxDelay": 200}

// withOptions returns fastRetry plus the given options.
func withOptions(kv ...any) map[string]any {
	o := map[string]any{}
	for k, v := range fastRetry {
		o[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		o[kv[i].(string)] = kv[i+1]
	}
	return o
}

// floodMessages is well past the messages a client may send at once.
const floodMessages = 60

func TestFanoutClientStopsOnAPolicyViolationInsteadOfLooping(t *testing.T) {
	skipShort(t)
	t.Parallel()
	td := startDaemon(t, testproc.StartRedis(t), map[string]string{"LOG_LEVEL": "info"})
	td.waitReady()
	h := startClientHarness(t, td.baseURL, nil)
	h.connect("a", withOptions("url", td.wsURL, "username", "alice"), false)
	waitStep(t, h.p, "status a open code=0")
	// Well past the daemon's burst of client messages (20): it closes with 1008
	// while frames are still arriving, and must read them off the socket
	// first; closing with unread data would be a TCP reset, which browsers
	// report as 1006 instead of 1008.
	h.send(map[string]any{"cmd": "flood", "name": "a", "count": floodMessages})
	waitStep(t, h.p, "status a failed code=1008 http=0 reconnects=0 reason=too many messages from client")
	// With 50 ms backoff a loop would have dialled again many times.
	time.Sleep(time.Second)
	if n := h.sockets("a"); n != 1 {
		t.Fatalf("the client opened %d WebSockets after 1008, want 1 (no reconnect)", n)
	}
	if n := td.counter("connections_accepted"); n != 1 {
		t.Fatalf("the daemon accepted %d connections, want 1", n)
	}
	h.exit()
}

func TestFanoutClientWaitsRetryAfterWhenRefusedForLoad(t *testing.T) {
	skipShort(t)
	t.Parallel()
	td := startDaemon(t, testproc.StartRedis(t), map[string]string{"MAX_CONNECTIONS_PER_USER": "1"})
	td.waitReady()
	_ = td.dial("dave")
	// The Retry-After the daemon sends a second connection of dave's.
	refused, err := http.Get(td.baseURL + "/ws?username=dave")
	if err != nil {
		t.Fatal(err)
	}
	_ = refused.Body.Close()
	retryAfterUserLimit, err := strconv.Atoi(refused.Header.Get("Retry-After"))
	if refused.StatusCode != http.StatusTooManyRequests || err != nil {
		t.Fatalf("a second connection of dave's: %s, Retry-After %q; want 429 with Retry-After", refused.Status, refused.Header.Get("Retry-After"))
	}
	h := startClientHarness(t, td.baseURL, nil)
	h.connect("busy", withOptions("url", td.wsURL, "username", "dave"), false)
	// The page is on another origin: reading the reason and Retry-After
	// takes the daemon's CORS headers.
	want := `status busy reconnecting code=1006 http=429 reconnects=0 reason="dave" already has 1 connections (MAX_CONNECTIONS_PER_USER); close one and retry delay=`
	waitStep(t, h.p, want)
	_, after, _ := strings.Cut(h.p.Output(), want)
	var delay int
	if _, err := fmt.Sscanf(after, "%d", &delay); err != nil || delay < retryAfterUserLimit*1000 {
		t.Fatalf("the client waits %d ms (%v), want at least Retry-After: %d s", delay, err, retryAfterUserLimit)
	}
	time.Sleep(time.Second)
	if n := h.sockets("busy"); n != 1 {
		t.Fatalf("the client opened %d WebSockets within a second of a 429 with Retry-After, want 1", n)
	}
	h.exit()
}

func TestFanoutClientReconnectsWhenTheDaemonShutsDown(t *testing.T) {
	skipShort(t)
	t.Parallel()
	r := testproc.StartRedis(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testproc.FreePort(t))
	td := startDaemonOn(t, r, map[string]string{"LOG_LEVEL": "info"}, addr)
	td.waitReady()
	h := startClientHarness(t, td.baseURL, nil)
	h.connect("a", map[string]any{"url": td.wsURL, "username": "alice", "minDelay": 200, "maxDelay": 1000}, false)
	waitStep(t, h.p, "status a open code=0 http=0 reconnects=0")
	testproc.Eventually(t, 5*time.Second, "client registered", func() bool { return td.connectionCount("alice") == 1 })
	td.publish("alice", `{"type":"before","n":1}`)
	waitStep(t, h.p, `event a {"type":"before","n":1}`)

	if err := td.stop(); err != nil {
		t.Fatalf("run returned %v", err)
	}
	waitStep(t, h.p, "status a reconnecting code=1001 http=0 reconnects=0 reason=server shutting down")
	td2 := startDaemonOn(t, r, map[string]string{"LOG_LEVEL": "info"}, addr)
	waitStep(t, h.p, "status a open code=0 http=0 reconnects=1")
	testproc.Eventually(t, 5*time.Second, "client registered again", func() bool { return td2.connectionCount("alice") == 1 })
	td2.waitReady()
	td2.publish("alice", `{"type":"after","n":2}`)
	waitStep(t, h.p, `event a {"type":"after","n":2}`)
	h.exit()
}

func TestFanoutClientStopsOnARefusedTokenInsteadOfLooping(t *testing.T) {
	skipShort(t)
	t.Parallel()
	td := startDaemon(t, testproc.StartRedis(t), jwtEnv(map[string]string{"LOG_LEVEL": "info"}))
	td.waitReady()
	h := startClientHarness(t, td.baseURL, nil)
	forged := mint(t, jwt.SigningMethodHS256, []byte("not-the-secret-0123456789-abcdefghijklm"), claims("alice", time.Minute), "")
	alice := mint(t, jwt.SigningMethodHS256, []byte(testSecret), claims("alice", time.Minute), "")
	h.connect("bad", withOptions("url", td.wsURL, "token", forged), false)
	h.connect("other", withOptions("url", td.wsURL, "token", alice, "username", "bob"), false)
	waitStep(t, h.p, "status bad unauthorized code=1006 http=401 reconnects=0 reason=invalid token: bad signature or algorithm not allowed")
	waitStep(t, h.p, `status other forbidden code=1006 http=403 reconnects=0 reason=token is for "alice", and "bob" is not in its orgs claim`)
	time.Sleep(time.Second)
	for _, name := range []string{"bad", "other"} {
		if n := h.sockets(name); n != 1 {
			t.Fatalf("client %s opened %d WebSockets, want 1 (no reconnect loop)", name, n)
		}
	}
	// One handshake and one fetch each, then nothing.
	if n := td.rejected("unauthorized"); n != 2 {
		t.Fatalf("%d requests refused as unauthorized, want 2", n)
	}
	if n := td.rejected("forbidden"); n != 2 {
		t.Fatalf("%d requests refused as forbidden, want 2", n)
	}
	h.exit()
}

func TestFanoutClientGetsAFreshTokenOnExpiryOrStopsWithAFixedOne(t *testing.T) {
	skipShort(t)
	t.Parallel()
	td := startDaemon(t, testproc.StartRedis(t), jwtEnv(map[string]string{"LOG_LEVEL": "info"}))
	td.waitReady()
	// Tokens expire within 1 to 2 seconds (exp has whole seconds).
	shortLived := func(sub string) string {
		c := claims(sub, 0)
		c["exp"] = time.Now().Add(2 * time.Second).Unix()
		return mint(t, jwt.SigningMethodHS256, []byte(testSecret), c, "")
	}
	var mu sync.Mutex
	issued := 0
	h := startClientHarness(t, td.baseURL, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		issued++
		mu.Unlock()
		fmt.Fprint(w, shortLived("alice"))
	})
	h.connect("fixed", withOptions("url", td.wsURL, "token", shortLived("bob")), false)
	h.connect("fresh", withOptions("url", td.wsURL), true)
	waitStep(t, h.p, "status fixed expired code=4001 http=0 reconnects=0 reason=token expired")
	waitStep(t, h.p, "status fresh reconnecting code=4001 http=0 reconnects=0 reason=token expired")
	waitStep(t, h.p, "status fresh open code=0 http=0 reconnects=1")
	testproc.Eventually(t, 5*time.Second, "fresh client registered again", func() bool { return td.connectionCount("alice") == 1 })
	td.publish("alice", `{"type":"after-expiry"}`)
	waitStep(t, h.p, `event fresh {"type":"after-expiry"}`)
	if n := h.sockets("fixed"); n != 1 {
		t.Fatalf("the client with a fixed token opened %d WebSockets, want 1", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if issued < 2 {
		t.Fatalf("the token function was called %d times, want at least 2", issued)
	}
	h.exit()
}

// harnessEvent is one event a harness client printed: its data and id.
type harnessEvent struct{ data, id string }

// events returns the events client name has printed, in order.
func (h *clientHarness) events(name string) []harnessEvent {
	var evs []harnessEvent
	for _, line := range strings.Split(h.p.Output(), "\n") {
		rest, ok := strings.CutPrefix(line, "event "+name+" ")
		if !ok {
			continue
		}
		data, id, _ := strings.Cut(rest, " id=")
		evs = append(evs, harnessEvent{data: data, id: id})
	}
	return evs
}

// waitEvent waits until client name has printed an event with data.
func (h *clientHarness) waitEvent(name, data string) {
	h.t.Helper()
	testproc.Eventually(h.t, 30*time.Second, "event "+data+" on "+name, func() bool {
		for _, e := range h.events(name) {
			if e.data == data {
				return true
			}
		}
		return false
	})
}

// urls returns the URLs of the WebSockets client name opened, oldest
// first, each with the subprotocol the daemon accepted.
func (h *clientHarness) urls(name string) []string {
	h.t.Helper()
	n := h.sockets(name)
	h.send(map[string]any{"cmd": "urls", "name": name})
	var urls []string
	testproc.Eventually(h.t, 10*time.Second, "socket URLs", func() bool {
		urls = urls[:0]
		for _, line := range strings.Split(h.p.Output(), "\n") {
			if u, ok := strings.CutPrefix(line, "url "+name+" "); ok {
				urls = append(urls, u)
			}
		}
		return len(urls) >= n
	})
	return urls[len(urls)-n:]
}

// resumeStep is the n-th event of the resume scenario.
func resumeStep(n int) string { return fmt.Sprintf(`{"type":"step","n":%d}`, n) }

// resumeAcrossRestart is the scenario a page must survive without losing
// or repeating an event: two events before it opens (which it asks for
// with history=2), five while the daemon runs (plain PUBLISH), five while
// the daemon is stopped (the publisher, which keeps them in the history),
// five as soon as another daemon on the same address is ready (while the
// page may still be catching up), and a last one. open connects page
// client name for alice, asking for the last 2 events. It returns the
// harness, for more checks, and the event ids in the order the page got
// them.
func resumeAcrossRestart(t *testing.T, name string, open func(h *clientHarness, td *testDaemon)) (*clientHarness, []string) {
	t.Helper()
	const user = "alice"
	r := testproc.StartRedis(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testproc.FreePort(t))
	td := startDaemonOn(t, r, map[string]string{"LOG_LEVEL": "info"}, addr)
	td.waitReady()
	td.publish(user, resumeStep(1))
	td.publish(user, resumeStep(2))
	h := startClientHarness(t, td.baseURL, nil)
	open(h, td)
	h.waitEvent(name, resumeStep(2))
	testproc.Eventually(t, 5*time.Second, "page connected", func() bool { return td.connectionCount(user) == 1 })
	for n := 3; n <= 7; n++ {
		td.publish(user, resumeStep(n))
	}
	h.waitEvent(name, resumeStep(7))

	if err := td.stop(); err != nil {
		t.Fatalf("run returned %v", err)
	}
	pub := history.NewPublisher(r.Client(), history.Retention{})
	var whileDown []string
	for n := 8; n <= 12; n++ {
		id, err := pub.Publish(context.Background(), user, []byte(resumeStep(n)))
		if err != nil {
			t.Fatal(err)
		}
		whileDown = append(whileDown, id)
	}
	td2 := startDaemonOn(t, r, map[string]string{"LOG_LEVEL": "info"}, addr)
	td2.waitReady()
	for n := 13; n <= 17; n++ {
		td2.publish(user, resumeStep(n))
	}
	h.waitEvent(name, resumeStep(17))
	// A duplicate of any earlier event would arrive before this one.
	td2.publish(user, resumeStep(18))
	h.waitEvent(name, resumeStep(18))

	var ids, got, want []string
	for i, e := range h.events(name) {
		ids, got = append(ids, e.id), append(got, e.data)
		want = append(want, resumeStep(i+1))
	}
	if len(got) != 18 || !slices.Equal(got, want) {
		t.Fatalf("the page got, in order:\n%s\nwant steps 1 to 18 once each", strings.Join(got, "\n"))
	}
	// The ids are the history's, in order.
	retained, err := history.After(context.Background(), r.Client(), user, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(retained) != 18 {
		t.Fatalf("the history holds %d events, want 18", len(retained))
	}
	for i, e := range retained {
		if ids[i] != e.ID || e.Data != resumeStep(i+1) {
			t.Fatalf("event %d reached the page with id %q, the history has %q (%s)", i+1, ids[i], e.ID, e.Data)
		}
	}
	if !slices.Equal(ids[7:12], whileDown) {
		t.Fatalf("events published while the daemon was down have ids %v on the page, the publisher returned %v", ids[7:12], whileDown)
	}
	return h, ids
}

func TestFanoutClientMissesNothingAcrossADaemonRestart(t *testing.T) {
	skipShort(t)
	t.Parallel()
	h, ids := resumeAcrossRestart(t, "a", func(h *clientHarness, td *testDaemon) {
		h.connect("a", map[string]any{"url": td.wsURL, "username": "alice", "history": 2, "minDelay": 200, "maxDelay": 1000}, false)
	})
	// The first connection asked for history, every later one resumed after
	// the last event it had: the 7th, before the restart.
	urls := h.urls("a")
	if len(urls) < 2 {
		t.Fatalf("the client opened %d WebSockets, want at least 2", len(urls))
	}
	for i, u := range urls {
		parsed, err := url.Parse(strings.Fields(u)[0])
		if err != nil {
			t.Fatal(err)
		}
		q := parsed.Query()
		if i == 0 && (q.Get("history") != "2" || q.Has("last_event_id")) {
			t.Fatalf("first connection %s, want history=2 and no last_event_id", u)
		}
		if i > 0 && (q.Has("history") || q.Get("last_event_id") != ids[6]) {
			t.Fatalf("connection %d: %s, want last_event_id=%s and no history", i+1, u, ids[6])
		}
	}
	if !strings.HasSuffix(urls[len(urls)-1], " protocol=fanout.v1") {
		t.Fatalf("the daemon did not accept subprotocol fanout.v1: %s", urls[len(urls)-1])
	}
	if n := countLines(h.p.Output(), "status a open "); n != 2 {
		t.Fatalf("the client opened %d connections, want 2 (one before the restart, one after)", n)
	}
	h.exit()
}

func TestFanoutClientCallsOnResyncWhenItsLastEventIsNoLongerKept(t *testing.T) {
	skipShort(t)
	t.Parallel()
	const user = "alice"
	r := testproc.StartRedis(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testproc.FreePort(t))
	td := startDaemonOn(t, r, map[string]string{"LOG_LEVEL": "info"}, addr)
	td.waitReady()
	h := startClientHarness(t, td.baseURL, nil)
	h.connect("a", withOptions("url", td.wsURL, "username", user), false)
	waitStep(t, h.p, "status a open code=0")
	testproc.Eventually(t, 5*time.Second, "client connected", func() bool { return td.connectionCount(user) == 1 })
	for n := 1; n <= 3; n++ {
		td.publish(user, resumeStep(n))
	}
	h.waitEvent("a", resumeStep(3))
	last := h.events("a")[2].id

	// While the daemon is down the history expires (HISTORY_TTL), then two
	// events are published: the client's last id is gone.
	if err := td.stop(); err != nil {
		t.Fatalf("run returned %v", err)
	}
	rdb := r.Client()
	if err := rdb.Del(context.Background(), history.HistoryKey(user)).Err(); err != nil {
		t.Fatal(err)
	}
	pub := history.NewPublisher(rdb, history.Retention{})
	for n := 4; n <= 5; n++ {
		if _, err := pub.Publish(context.Background(), user, []byte(resumeStep(n))); err != nil {
			t.Fatal(err)
		}
	}
	td2 := startDaemonOn(t, r, map[string]string{"LOG_LEVEL": "info"}, addr)
	td2.waitReady()
	h.waitEvent("a", resumeStep(5))
	// A page that kept an id that was never one (sessionStorage from
	// another deployment, say) is told the same.
	h.connect("b", withOptions("url", td2.wsURL, "username", user, "lastEventId", "not-an-id"), false)
	h.waitEvent("b", resumeStep(5))
	td2.publish(user, resumeStep(6))
	h.waitEvent("a", resumeStep(6))
	h.waitEvent("b", resumeStep(6))

	for _, c := range []struct{ name, last string }{{"a", last}, {"b", "not-an-id"}} {
		// One resync, naming the id asked for, before the retained events.
		var resyncs []int
		firstEvent := -1
		lines := strings.Split(h.p.Output(), "\n")
		for i, line := range lines {
			if strings.HasPrefix(line, "resync "+c.name+" reason=") {
				resyncs = append(resyncs, i)
			}
			if firstEvent < 0 && strings.HasPrefix(line, "event "+c.name+" "+resumeStep(4)) {
				firstEvent = i
			}
		}
		if len(resyncs) != 1 || resyncs[0] > firstEvent {
			t.Fatalf("client %s: want one resync, before the retained events; the page printed:\n%s", c.name, h.p.Output())
		}
		line := lines[resyncs[0]]
		if strings.HasPrefix(line, "resync "+c.name+" reason= ") || !strings.HasSuffix(line, " last="+c.last) {
			t.Fatalf("client %s: %q, want a reason and last=%s", c.name, line, c.last)
		}
		var got []string
		for _, e := range h.events(c.name) {
			got = append(got, e.data)
		}
		want := []string{resumeStep(4), resumeStep(5), resumeStep(6)}
		if c.name == "a" {
			want = append([]string{resumeStep(1), resumeStep(2), resumeStep(3)}, want...)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("client %s got %q, want %q", c.name, got, want)
		}
	}
	h.exit()
}

func TestFanoutClientWithHistoryOffGetsEventsWithoutIds(t *testing.T) {
	skipShort(t)
	t.Parallel()
	td := startDaemon(t, testproc.StartRedis(t), map[string]string{"HISTORY": "off"})
	td.waitReady()
	h := startClientHarness(t, td.baseURL, nil)
	h.connect("a", withOptions("url", td.wsURL, "username", "alice", "history", 5), false)
	waitStep(t, h.p, "status a open code=0")
	testproc.Eventually(t, 5*time.Second, "client connected", func() bool { return td.connectionCount("alice") == 1 })
	td.publish("alice", `{"type":"unrecorded","n":1}`)
	waitStep(t, h.p, "event a {\"type\":\"unrecorded\",\"n\":1} id=\n")
	if u := h.urls("a")[0]; !strings.HasSuffix(u, " protocol=fanout.v1") {
		t.Fatalf("with HISTORY=off the daemon did not accept fanout.v1: %s", u)
	}
	h.exit()
}

// TestFanoutClientAcknowledgesOnceThePageIsVisible: read receipts from the
// browser. With the default ack option an event that arrives while the
// tab is hidden is acknowledged when the page becomes visible; 'receipt'
// acknowledges on arrival, hidden or not; 'never' never. The daemon records
// the user's seen id, and the console shows it.
func TestFanoutClientAcknowledgesOnceThePageIsVisible(t *testing.T) {
	skipShort(t)
	t.Parallel()
	r := testproc.StartRedis(t)
	td := startDaemon(t, r, map[string]string{"LOG_LEVEL": "info"})
	td.waitReady()
	seen := func(user string) string {
		id, err := history.Layout{}.Seen(context.Background(), r.Client(), user)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	h := startClientHarness(t, td.baseURL, nil)
	h.send(map[string]any{"cmd": "visibility", "state": "hidden"})
	h.connect("a", withOptions("url", td.wsURL, "username", "alice"), false)
	h.connect("r", withOptions("url", td.wsURL, "username", "rita", "ack", "receipt"), false)
	h.connect("n", withOptions("url", td.wsURL, "username", "nora", "ack", "never"), false)
	for _, name := range []string{"a", "r", "n"} {
		waitStep(t, h.p, "status "+name+" open code=0")
	}
	testproc.Eventually(t, 5*time.Second, "clients connected", func() bool {
		return td.connectionCount("alice") == 1 && td.connectionCount("rita") == 1 && td.connectionCount("nora") == 1
	})
	for _, u := range []string{"alice", "rita", "nora"} {
		td.publish(u, resumeStep(1))
	}
	h.waitEvent("a", resumeStep(1))
	h.waitEvent("r", resumeStep(1))
	h.waitEvent("n", resumeStep(1))
	aliceID, ritaID := h.events("a")[0].id, h.events("r")[0].id

	// rita's page acknowledges on arrival, hidden as it is.
	testproc.Eventually(t, 5*time.Second, "rita's event seen", func() bool { return seen("rita") == ritaID })
	waitStep(t, h.p, "ack r "+ritaID)
	// alice's page is hidden: nothing yet (her event came with rita's,
	// whose ack is in already).
	time.Sleep(500 * time.Millisecond)
	if got := seen("alice"); got != "" || countLines(h.p.Output(), "ack a ") != 0 {
		t.Fatalf("alice's hidden page acknowledged (seen %q)", got)
	}
	// The user comes back to the tab.
	h.send(map[string]any{"cmd": "visibility", "state": "visible"})
	waitStep(t, h.p, "ack a "+aliceID)
	testproc.Eventually(t, 5*time.Second, "alice's event seen", func() bool { return seen("alice") == aliceID })
	// A visible page acknowledges new events as they come.
	td.publish("alice", resumeStep(2))
	h.waitEvent("a", resumeStep(2))
	second := h.events("a")[1].id
	testproc.Eventually(t, 5*time.Second, "alice's second event seen", func() bool { return seen("alice") == second })
	if got := seen("nora"); got != "" || countLines(h.p.Output(), "ack n ") != 0 {
		t.Fatalf("ack 'never' acknowledged (seen %q)", got)
	}
	h.exit()
}
