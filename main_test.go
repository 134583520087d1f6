package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// daemonCommand runs this test binary as the real fanout process.
func daemonCommand(t testing.TB, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{"FANOUT_TEST_RUN_MAIN=1"}, env...)...)
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

func TestSIGTERMSendsGoingAwayAndExits(t *testing.T) {
	r := startRedis(t)
	port := freePort(t)
	cmd := daemonCommand(t, "PORT="+strconv.Itoa(port), "LISTEN_HOST=127.0.0.1",
		"REDIS_HOST=127.0.0.1", "REDIS_PORT="+strconv.Itoa(r.port))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	logs := &syncBuffer{}
	subscribed := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		signalled := false
		for sc.Scan() {
			logs.Write(append(sc.Bytes(), '\n'))
			if !signalled && strings.Contains(sc.Text(), "Subscribed to Redis") {
				close(subscribed)
				signalled = true
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			t.Logf("daemon output:\n%s", logs.String())
		}
	})
	select {
	case <-subscribed:
	case <-time.After(10 * time.Second):
		t.Fatal("daemon did not subscribe")
	}

	url := "ws://127.0.0.1:" + strconv.Itoa(port) + "/ws?username=u"
	var conns []*websocket.Conn
	for range 3 {
		conns = append(conns, dialWS(t, url, nil))
	}
	eventually(t, 5*time.Second, "connections logged", func() bool {
		return countLines(logs.String(), "New WebSocket connection") == 3
	})

	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i, conn := range conns {
		if err := readUntilError(conn); !websocket.IsCloseError(err, websocket.CloseGoingAway) {
			t.Fatalf("conn %d: %v, want close 1001", i, err)
		}
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit: %v, want 0", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("daemon did not exit within 10s of SIGTERM")
	}
	t.Logf("exited %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(logs.String(), `msg=Stopped`) {
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
