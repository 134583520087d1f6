package e2e

import (
	"context"
	"net"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"fanout/internal/testproc"
)

// testDaemon is a fanout process with the vocabulary the tests that moved
// here from the root package's in-process daemon were written in: the same
// calls, answered from outside (its log, /admin/stats, Redis).
type testDaemon struct {
	*fanout
	baseURL, wsURL, adminURL string
	// pub publishes on the daemon's Redis.
	pub *redis.Client
	// logs is what the process has logged.
	logs *testproc.Buffer
}

// testEnv is what the in-process test daemons ran with: debug logs and
// short Redis timings, so that probes and retries take milliseconds.
func testEnv() []string {
	return append([]string{"LOG_LEVEL=debug"}, quickRedisEnv...)
}

// envOf turns a map of variables into KEY=value entries, in a stable order.
func envOf(env map[string]string) []string {
	var out []string
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// startDaemon runs a fanout process against r with env over testEnv on a
// free port, and returns once it listens (ready or not).
func startDaemon(t *testing.T, r *testproc.Redis, env map[string]string) *testDaemon {
	t.Helper()
	return startDaemonOn(t, r, env, testproc.Addr(testproc.FreePort(t)))
}

// startDaemonOn is startDaemon listening on addr, so that a test can start
// another daemon where a stopped one was.
func startDaemonOn(t *testing.T, r *testproc.Redis, env map[string]string, addr string) *testDaemon {
	t.Helper()
	_, portText, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(portText)
	cmd := exec.Command(fanoutBinary(t))
	adminPort := testproc.FreePort(t)
	cmd.Env = append(append(append(os.Environ(), fanoutEnv(r.Addr(), port, adminPort)...), testEnv()...), envOf(env)...)
	f := startFanoutCmd(t, cmd, port, adminPort)
	f.adminToken = env["ADMIN_TOKEN"]
	td := &testDaemon{fanout: f, baseURL: f.base, wsURL: f.wsURL, adminURL: f.admin, pub: r.Client(), logs: f.Out}
	testproc.WaitFor(t, 20*time.Second, "fanout listening on "+addr, func() string {
		if f.Exited() {
			t.Fatalf("fanout exited (%v) before it listened:\n%s", f.Err(), f.Output())
		}
		if f.readyStatus() == 0 {
			return "no answer on /ready"
		}
		return ""
	})
	return td
}

// stop sends SIGTERM and returns how the process exited (nil for status 0).
func (td *testDaemon) stop() error {
	td.t.Helper()
	if !td.Exited() {
		_ = td.Cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-td.Done():
		return td.Err()
	case <-time.After(20 * time.Second):
		td.t.Fatal("daemon did not stop within 20s")
		return nil
	}
}

// waitReady waits until /ready answers 200.
func (td *testDaemon) waitReady() {
	td.t.Helper()
	td.fanout.waitReady()
}

// connectionCount returns the connections the daemon holds for username.
func (td *testDaemon) connectionCount(username string) int { return td.connections(username) }

// rejected returns the /ws requests refused for reason (/admin/stats).
func (td *testDaemon) rejected(reason string) uint64 {
	td.t.Helper()
	rejected := td.stats().Rejected
	n, ok := rejected[reason]
	if !ok {
		td.t.Fatalf("/admin/stats has no refusal reason %q: %v", reason, rejected)
	}
	return n
}

// dial opens a WebSocket for username and waits until the daemon counts it.
func (td *testDaemon) dial(username string) *websocket.Conn {
	td.t.Helper()
	before := td.connectionCount(username)
	conn := dialWS(td.t, td.wsURL+"?username="+username, nil)
	testproc.Eventually(td.t, 5*time.Second, "connection registered", func() bool {
		return td.connectionCount(username) > before
	})
	return conn
}

// publish publishes payload on username's channel.
func (td *testDaemon) publish(username, payload string) {
	td.t.Helper()
	if err := td.pub.Publish(context.Background(), "workflow:events:"+username, payload).Err(); err != nil {
		td.t.Fatalf("publish: %v", err)
	}
}

// startTestDaemons runs n ready daemons on r with env, as instances of one
// deployment, and returns them with their base URLs.
func startTestDaemons(t *testing.T, r *testproc.Redis, n int, env map[string]string) ([]*testDaemon, []string) {
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
