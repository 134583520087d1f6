package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/internal/testproc"
)

// fanout is one fanout process of a test: the built binary, listening on
// 127.0.0.1:port, with its admin listener on 127.0.0.1:adminPort.
type fanout struct {
	*testproc.Process
	t    testing.TB
	port int
	// base is http://127.0.0.1:port; wsURL is its /ws; admin is the admin
	// listener's base URL.
	base, wsURL, admin string
	// adminToken is its ADMIN_TOKEN, if any.
	adminToken string
}

// fanoutEnv is the environment a test's fanout process starts from: Redis
// at redisAddr, no per-address or per-user limit (every test client comes
// from 127.0.0.1), the admin listener on adminPort, Info logs.
func fanoutEnv(redisAddr string, port, adminPort int) []string {
	host, redisPort, _ := net.SplitHostPort(redisAddr)
	return []string{
		"PORT=" + strconv.Itoa(port), "LISTEN_HOST=127.0.0.1",
		"REDIS_HOST=" + host, "REDIS_PORT=" + redisPort,
		"CONNECT_RATE_PER_IP=0", "MAX_CONNECTIONS_PER_USER=0",
		"LOG_LEVEL=info", "SHUTDOWN_TIMEOUT=5s", "ADMIN_ADDR=" + testproc.Addr(adminPort),
	}
}

// quickRedisEnv are short Redis timings: a lost subscription is noticed
// and retried within a second, for the failover tests.
var quickRedisEnv = []string{"PROBE_INTERVAL=100ms", "PROBE_TIMEOUT=400ms", "REDIS_RETRY_MAX=300ms"}

// startFanout starts the daemon on a free port against redisAddr with env
// (later entries win) and waits until /ready answers 200.
func startFanout(t testing.TB, redisAddr string, env ...string) *fanout {
	t.Helper()
	f := launchFanout(t, redisAddr, testproc.FreePort(t), env...)
	f.waitReady()
	return f
}

// launchFanout starts the daemon on port without waiting for it.
func launchFanout(t testing.TB, redisAddr string, port int, env ...string) *fanout {
	t.Helper()
	cmd := exec.Command(fanoutBinary(t))
	adminPort := testproc.FreePort(t)
	cmd.Env = append(append(os.Environ(), fanoutEnv(redisAddr, port, adminPort)...), env...)
	return startFanoutCmd(t, cmd, port, adminPort)
}

// startFanoutCmd starts cmd, a fanout process listening on port and
// adminPort.
func startFanoutCmd(t testing.TB, cmd *exec.Cmd, port, adminPort int) *fanout {
	t.Helper()
	f := &fanout{t: t, port: port, base: "http://" + testproc.Addr(port), wsURL: "ws://" + testproc.Addr(port) + "/ws",
		admin: "http://" + testproc.Addr(adminPort)}
	f.Process = testproc.Start(t, cmd)
	t.Cleanup(func() {
		if strings.Contains(f.Output(), "DATA RACE") {
			t.Errorf("a fanout process reported a data race:\n%s", f.Output())
		}
	})
	return f
}

// readyStatus returns the status of /ready, or 0 when it cannot be reached.
func (f *fanout) readyStatus() int {
	status, _, err := get(f.base + "/ready")
	if err != nil {
		return 0
	}
	return status
}

// waitReady waits until /ready answers 200, and fails at once if the
// process exits.
func (f *fanout) waitReady() {
	f.t.Helper()
	testproc.WaitFor(f.t, 20*time.Second, "fanout on port "+strconv.Itoa(f.port)+" ready", func() string {
		if f.Exited() {
			f.t.Fatalf("fanout exited (%v) before it was ready:\n%s", f.Err(), f.Output())
		}
		if status := f.readyStatus(); status != http.StatusOK {
			return fmt.Sprintf("/ready %d", status)
		}
		return ""
	})
}

// stats is the part of /admin/stats the tests read.
type stats struct {
	Ready       bool  `json:"ready"`
	Connections int64 `json:"connections"`
	Users       int64 `json:"users"`
	TopUsers    []struct {
		Username    string `json:"username"`
		Connections int    `json:"connections"`
	} `json:"top_users"`
	Counters map[string]uint64 `json:"counters"`
	Rejected map[string]uint64 `json:"rejected"`
	Redis    struct {
		Subscribed bool   `json:"subscribed"`
		Failures   uint64 `json:"failures"`
	} `json:"redis"`
	History struct {
		Catchups int64 `json:"catchups"`
	} `json:"history"`
	Subscription struct {
		Mode         string `json:"mode"`
		Channels     int    `json:"channels"`
		SoleRecorder bool   `json:"sole_recorder"`
	} `json:"subscription"`
}

// stats reads /admin/stats.
func (f *fanout) stats() stats {
	f.t.Helper()
	req, err := http.NewRequest(http.MethodGet, f.admin+"/admin/stats", nil)
	if err != nil {
		f.t.Fatal(err)
	}
	if f.adminToken != "" {
		req.Header.Set("Authorization", "Bearer "+f.adminToken)
	}
	status, body, err := do(req)
	if err != nil || status != http.StatusOK {
		f.t.Fatalf("fanout on port %d: /admin/stats: %d %v", f.port, status, err)
	}
	var s stats
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		f.t.Fatalf("fanout on port %d: /admin/stats: %v", f.port, err)
	}
	return s
}

// connections returns the connections the process holds for username
// (/admin/stats's top users).
func (f *fanout) connections(username string) int {
	f.t.Helper()
	for _, u := range f.stats().TopUsers {
		if u.Username == username {
			return u.Connections
		}
	}
	return 0
}

// counter returns the counter name of /admin/stats.
func (f *fanout) counter(name string) uint64 {
	f.t.Helper()
	counters := f.stats().Counters
	n, ok := counters[name]
	if !ok {
		f.t.Fatalf("/admin/stats has no counter %q: %v", name, counters)
	}
	return n
}

// sigterm sends SIGTERM and waits up to 15 s for an exit with status 0.
func (f *fanout) sigterm() {
	f.t.Helper()
	f.Signal(f.t, syscall.SIGTERM)
	f.WaitExit(f.t, 15*time.Second)
}

// logs is what the process has logged so far.
func (f *fanout) logs() string { return f.Output() }

// redisClient returns a go-redis client of addr, closed at cleanup.
func redisClient(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// publish publishes payload on username's channel through rdb.
func publish(t testing.TB, rdb redis.Cmdable, username, payload string) {
	t.Helper()
	if err := rdb.Publish(context.Background(), "workflow:events:"+username, payload).Err(); err != nil {
		t.Fatalf("publish: %v", err)
	}
}
