package main

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

// daemonCommand runs this test binary as the real fanout process.
func daemonCommand(t testing.TB, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	// A free admin port, so that daemons of parallel tests never collide.
	cmd.Env = append(os.Environ(), append([]string{"FANOUT_TEST_RUN_MAIN=1", "ADMIN_ADDR=127.0.0.1:0"}, env...)...)
	return cmd
}

func TestBadConfigExitsWithCode2AndOneLine(t *testing.T) {
	for _, env := range []string{"PORT=abc", "REDIS_PORT=99999", "LOG_FORMAT=xml"} {
		cmd := daemonCommand(t, env)
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

// daemonProcess is a process started by a test (testproc owns it), with
// the names the root tests use.
type daemonProcess struct {
	*testproc.Process
	cmd  *exec.Cmd
	logs *syncBuffer
}

// startProcess starts cmd, collects its output and kills it at cleanup.
func startProcess(tb testing.TB, cmd *exec.Cmd) *daemonProcess {
	tb.Helper()
	p := testproc.Start(tb, cmd)
	return &daemonProcess{Process: p, cmd: cmd, logs: p.Out}
}

// waitExit waits up to d for the process to exit with status 0.
func (p *daemonProcess) waitExit(t testing.TB, d time.Duration) {
	t.Helper()
	p.WaitExit(t, d)
}

// waitLog waits until the process has written a line containing s.
func (p *daemonProcess) waitLog(tb testing.TB, d time.Duration, s string) {
	tb.Helper()
	p.WaitOutput(tb, d, s)
}

func TestSIGTERMSendsGoingAwayAndExits(t *testing.T) {
	r := startRedis(t)
	port := freePort(t)
	p := startProcess(t, daemonCommand(t, "PORT="+strconv.Itoa(port), "LISTEN_HOST=127.0.0.1",
		"REDIS_HOST=127.0.0.1", "REDIS_PORT="+strconv.Itoa(r.Port)))
	p.waitLog(t, 10*time.Second, "Subscribed to Redis")

	url := "ws://127.0.0.1:" + strconv.Itoa(port) + "/ws?username=u"
	var conns []*websocket.Conn
	for range 3 {
		conns = append(conns, dialWS(t, url, nil))
	}
	eventually(t, 5*time.Second, "connections logged", func() bool {
		return countLines(p.logs.String(), "New WebSocket connection") == 3
	})

	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i, conn := range conns {
		if err := readUntilError(conn); !websocket.IsCloseError(err, websocket.CloseGoingAway) {
			t.Fatalf("conn %d: %v, want close 1001", i, err)
		}
	}
	p.waitExit(t, 10*time.Second)
	t.Logf("exited %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(p.logs.String(), `msg=Stopped`) {
		t.Fatal("final counters not logged")
	}
}

func TestShutdownDropsClientsThatDoNotReadWithinTheTimeout(t *testing.T) {
	r := startRedis(t)
	td := startDaemon(t, r, map[string]string{"SHUTDOWN_TIMEOUT": "1s", "WRITE_WAIT": "30s", "LOG_LEVEL": "info"})
	td.waitReady()
	_ = td.dial("stuck")
	big := `{"d":"` + strings.Repeat("x", 512<<10) + `"}`
	// Fill the socket buffers so that the write pump blocks.
	td.publishPaced("stuck", big, 40)
	start := time.Now()
	if err := td.stop(); err != nil {
		t.Fatalf("run returned %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("shutdown took %v with SHUTDOWN_TIMEOUT=1s", took)
	}
}

func TestStartScriptStartsALocalRedisAndTheDaemon(t *testing.T) {
	redisPort, httpPort := freePort(t), freePort(t)
	cmd := exec.Command("./start.sh")
	cmd.Env = append(os.Environ(), "PORT="+strconv.Itoa(httpPort), "LISTEN_HOST=127.0.0.1",
		"REDIS_HOST=localhost", "REDIS_PORT="+strconv.Itoa(redisPort), "ADMIN_ADDR=127.0.0.1:"+strconv.Itoa(freePort(t)))
	p := startProcess(t, cmd)
	pidFile := filepath.Join(".run", "redis-"+strconv.Itoa(redisPort)+".pid")
	t.Cleanup(func() {
		// The local Redis outlives the daemon by design; stop this one.
		if pid, err := os.ReadFile(pidFile); err == nil {
			if n, err := strconv.Atoi(strings.TrimSpace(string(pid))); err == nil {
				_ = syscall.Kill(n, syscall.SIGTERM)
			}
		}
		eventually(t, 10*time.Second, "local redis stopped", func() bool {
			_, err := os.Stat(pidFile) // Redis removes it on exit
			return err != nil
		})
		_ = os.Remove(filepath.Join(".run", "redis-"+strconv.Itoa(redisPort)+".log"))
	})

	p.waitLog(t, 30*time.Second, "start.sh: started a local redis-server on port "+strconv.Itoa(redisPort))
	p.waitLog(t, 120*time.Second, "Subscribed to Redis") // includes go build
	// The quick start runs in protected mode, and says so.
	p.waitLog(t, time.Second, "PROTECTED MODE")
	conn := dialWS(t, "ws://127.0.0.1:"+strconv.Itoa(httpPort)+"/ws?username=test-user", nil)
	p.waitLog(t, 5*time.Second, "New WebSocket connection")
	r := &redisServer{testproc.NewRedis(t, redisPort)}
	if err := r.client().Publish(t.Context(), "workflow:events:test-user", `{"type":"test","message":"hello"}`).Err(); err != nil {
		t.Fatal(err)
	}
	if got := readText(t, conn, 5*time.Second); got != `{"type":"test","message":"hello"}` {
		t.Fatalf("got %q", got)
	}

	// start.sh execs the daemon, so the signal reaches it directly.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.waitExit(t, 15*time.Second)
}
