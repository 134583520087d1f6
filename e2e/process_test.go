package e2e

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"fanout/internal/testproc"
)

// The daemon as a process: its exit codes, SIGTERM, and start.sh.

func TestBadConfigExitsWithCode2AndOneLine(t *testing.T) {
	bin := fanoutBinary(t)
	t.Parallel()
	for _, env := range []string{"PORT=abc", "REDIS_PORT=99999", "LOG_FORMAT=xml", "PRESENCE=maybe", "PRESENCE_TTL=1s", "PRESENCE_GRACE=-1s"} {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), "ADMIN_ADDR=127.0.0.1:0", env)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 2 {
			t.Fatalf("%s: %v, want exit code 2", env, err)
		}
		name := strings.SplitN(env, "=", 2)[0]
		out := strings.TrimSuffix(stderr.String(), "\n")
		if strings.Count(out, "\n") != 0 || !strings.Contains(out, name) {
			t.Fatalf("%s: stderr %q, want one line naming %s", env, out, name)
		}
	}
}

func TestAdminAddrOrTrustedProxiesWrongExitsWithCode2(t *testing.T) {
	bin := fanoutBinary(t)
	t.Parallel()
	cases := []struct {
		env  string
		want []string
	}{
		{"ADMIN_ADDR=0.0.0.0:9084", []string{`ADMIN_ADDR="0.0.0.0:9084"`, "ADMIN_TOKEN"}},
		{"TRUSTED_PROXIES=nginx.internal", []string{`TRUSTED_PROXIES="nginx.internal"`, "CIDR"}},
	}
	for _, tc := range cases {
		// testproc kills it at cleanup, should it start serving instead.
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), "ADMIN_ADDR=127.0.0.1:0", tc.env)
		p := testproc.Start(t, cmd)
		select {
		case <-p.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: still running after 10s, want exit code 2 at once", tc.env)
		}
		var exit *exec.ExitError
		if !errors.As(p.Err(), &exit) || exit.ExitCode() != 2 {
			t.Fatalf("%s: %v, want exit code 2", tc.env, p.Err())
		}
		// Nothing but the one line: the daemon did not start.
		out := strings.TrimSuffix(p.Output(), "\n")
		if strings.Contains(out, "\n") || !strings.Contains(out, tc.want[0]) || !strings.Contains(out, tc.want[1]) {
			t.Fatalf("%s: output %q, want one line with %q and %q", tc.env, out, tc.want[0], tc.want[1])
		}
	}
}

func TestUnreachableOrWrongSeedsStopStartUpWithCode2AndOneLine(t *testing.T) {
	bin := fanoutBinary(t)
	t.Parallel()
	plain := testproc.StartRedis(t)
	nobody := testproc.Addr(testproc.FreePort(t)) // nothing listens there
	cases := []struct {
		env  []string
		want []string
	}{
		{[]string{"REDIS_CLUSTER_ADDRS=" + nobody}, []string{"REDIS_CLUSTER_ADDRS", nobody, "no address answers"}},
		{[]string{"REDIS_CLUSTER_ADDRS=" + plain.Addr()}, []string{"REDIS_CLUSTER_ADDRS", "without cluster mode"}},
		{[]string{"REDIS_SENTINEL_ADDRS=" + nobody, "REDIS_SENTINEL_MASTER=events"}, []string{"REDIS_SENTINEL_ADDRS", nobody}},
		{[]string{"REDIS_SENTINEL_ADDRS=,", "REDIS_SENTINEL_MASTER=events"}, []string{"REDIS_SENTINEL_ADDRS", "lists no address"}},
		{[]string{"PUBSUB_SHARDED=true"}, []string{"PUBSUB_SHARDED", "SUBSCRIBE_MODE=user"}},
		{[]string{"REDIS_CLUSTER_ADDRS="}, []string{"REDIS_CLUSTER_ADDRS", "is set but empty"}},
		{[]string{"REDIS_HOST=127.0.0.1", "REDIS_PORT=" + strconv.Itoa(plain.Port), "REDIS_TLS=true"},
			[]string{"redis at " + plain.Addr() + " did not answer the TLS handshake within 2s", "is REDIS_TLS right?"}},
	}
	for _, tc := range cases {
		cmd := exec.Command(bin)
		cmd.Env = append(append(os.Environ(), "ADMIN_ADDR=127.0.0.1:0"), tc.env...)
		p := testproc.Start(t, cmd)
		select {
		case <-p.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: still running after 10s, want exit code 2", tc.env)
		}
		var exit *exec.ExitError
		if !errors.As(p.Err(), &exit) || exit.ExitCode() != 2 {
			t.Fatalf("%s: %v, want exit code 2", tc.env, p.Err())
		}
		out := strings.TrimSuffix(p.Output(), "\n")
		if strings.Contains(out, "\n") {
			t.Fatalf("%s: output %q, want one line", tc.env, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Fatalf("%s: output %q, want it to say %q", tc.env, out, w)
			}
		}
	}
}

func TestSIGTERMSendsGoingAwayAndExits(t *testing.T) {
	fanoutBinary(t)
	t.Parallel()
	r := testproc.StartRedis(t)
	f := startFanout(t, r.Addr())
	f.WaitOutput(t, 10*time.Second, "Subscribed to Redis")

	url := f.wsURL + "?username=u"
	var conns []*websocket.Conn
	for range 3 {
		conns = append(conns, dialWS(t, url, nil))
	}
	testproc.Eventually(t, 5*time.Second, "connections logged", func() bool {
		return countLines(f.logs(), "New WebSocket connection") == 3
	})

	start := time.Now()
	f.Signal(t, syscall.SIGTERM)
	for i, conn := range conns {
		if err := readUntilError(conn); !websocket.IsCloseError(err, websocket.CloseGoingAway) {
			t.Fatalf("conn %d: %v, want close 1001", i, err)
		}
	}
	f.WaitExit(t, 10*time.Second)
	t.Logf("exited %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(f.logs(), `msg=Stopped`) {
		t.Fatal("final counters not logged")
	}
}

func TestStartScriptStartsALocalRedisAndTheDaemon(t *testing.T) {
	skipShort(t)
	testproc.NeedTool(t, "redis-server")
	t.Parallel()
	redisPort, httpPort := testproc.FreePort(t), testproc.FreePort(t)
	cmd := exec.Command("./start.sh")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "PORT="+strconv.Itoa(httpPort), "LISTEN_HOST=127.0.0.1",
		"REDIS_HOST=localhost", "REDIS_PORT="+strconv.Itoa(redisPort), "ADMIN_ADDR=127.0.0.1:"+strconv.Itoa(testproc.FreePort(t)))
	p := testproc.Start(t, cmd)
	pidFile := filepath.Join("..", ".run", "redis-"+strconv.Itoa(redisPort)+".pid")
	t.Cleanup(func() {
		// The local Redis outlives the daemon by design; stop this one.
		if pid, err := os.ReadFile(pidFile); err == nil {
			if n, err := strconv.Atoi(strings.TrimSpace(string(pid))); err == nil {
				_ = syscall.Kill(n, syscall.SIGTERM)
			}
		}
		testproc.Eventually(t, 10*time.Second, "local redis stopped", func() bool {
			_, err := os.Stat(pidFile) // Redis removes it on exit
			return err != nil
		})
		_ = os.Remove(filepath.Join("..", ".run", "redis-"+strconv.Itoa(redisPort)+".log"))
	})

	p.WaitOutput(t, 30*time.Second, "start.sh: started a local redis-server on port "+strconv.Itoa(redisPort))
	p.WaitOutput(t, 120*time.Second, "Subscribed to Redis") // includes go build
	// The quick start runs in protected mode, and says so.
	p.WaitOutput(t, time.Second, "PROTECTED MODE")
	conn := dialWS(t, "ws://127.0.0.1:"+strconv.Itoa(httpPort)+"/ws?username=test-user", nil)
	p.WaitOutput(t, 5*time.Second, "New WebSocket connection")
	publish(t, redisClient(t, testproc.Addr(redisPort)), "test-user", `{"type":"test","message":"hello"}`)
	if got := readText(t, conn, 5*time.Second); got != `{"type":"test","message":"hello"}` {
		t.Fatalf("got %q", got)
	}

	// start.sh execs the daemon, so the signal reaches it directly.
	p.Signal(t, syscall.SIGTERM)
	p.WaitExit(t, 15*time.Second)
}
