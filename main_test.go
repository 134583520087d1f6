package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"fanout/internal/testproc"
)

// daemonCommand runs this test binary as the real fanout process.
func daemonCommand(t testing.TB, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	// A free admin port, so that daemons of parallel tests never collide.
	cmd.Env = append(os.Environ(), append([]string{"FANOUT_TEST_RUN_MAIN=1", "ADMIN_ADDR=127.0.0.1:0"}, env...)...)
	return cmd
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

func TestShutdownDropsClientsThatDoNotReadWithinTheTimeout(t *testing.T) {
	r := startRedis(t)
	// The default probe timing: testEnv's 400 ms probe timeout, missed on a
	// busy machine, would resubscribe and lose a publish the test waits for.
	td := startDaemon(t, r, map[string]string{"SHUTDOWN_TIMEOUT": "1s", "WRITE_WAIT": "30s", "LOG_LEVEL": "info",
		"PROBE_INTERVAL": "", "PROBE_TIMEOUT": ""})
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
