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
	for _, env := range []string{"PORT=abc", "REDIS_PORT=99999", "LOG_FORMAT=xml"} {
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
