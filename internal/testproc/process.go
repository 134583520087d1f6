package testproc

import (
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Process is a child process owned by one test: its output is collected,
// and the test's cleanup kills its process group (children such as nginx
// workers included) and waits for it.
type Process struct {
	// Cmd is the started command.
	Cmd *exec.Cmd
	// Out collects what it writes to stdout and stderr (those cmd did not
	// direct elsewhere).
	Out *Buffer
	// done is closed once the process has exited; err is then what Wait
	// returned.
	done chan struct{}
	err  error
}

// Start starts cmd for tb, or fails tb. What it writes to stdout and
// stderr goes to Out, unless cmd sets its own writer.
func Start(tb testing.TB, cmd *exec.Cmd) *Process {
	tb.Helper()
	p, err := start(tb, cmd)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

func start(tb testing.TB, cmd *exec.Cmd) (*Process, error) {
	p := &Process{Cmd: cmd, Out: &Buffer{}, done: make(chan struct{})}
	if cmd.Stdout == nil {
		cmd.Stdout = p.Out
	}
	if cmd.Stderr == nil {
		cmd.Stderr = p.Out
	}
	// Its own process group, so that stopping it also stops children that
	// would otherwise hold the output pipe open.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	tb.Cleanup(func() {
		p.Kill()
		if tb.Failed() {
			tb.Logf("%s output:\n%s", strings.Join(cmd.Args, " "), p.Out.String())
		}
	})
	return p, nil
}

// Output returns what the process has written to stdout and stderr.
func (p *Process) Output() string { return p.Out.String() }

// Done is closed once the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is what Wait returned; only meaningful once Done is closed.
func (p *Process) Err() error { return p.err }

// Signal sends sig to the process (not its group).
func (p *Process) Signal(tb testing.TB, sig syscall.Signal) {
	tb.Helper()
	if err := p.Cmd.Process.Signal(sig); err != nil {
		tb.Fatalf("signal %v to %s: %v", sig, p.Cmd.Path, err)
	}
}

// Kill kills the process group at once, as a crash would, and waits for
// the process to exit.
func (p *Process) Kill() {
	_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// WaitExit waits up to d for the process to exit with status 0.
func (p *Process) WaitExit(tb testing.TB, d time.Duration) {
	tb.Helper()
	select {
	case <-p.done:
		if p.err != nil {
			tb.Fatalf("%s exited with %v, want status 0", p.Cmd.Path, p.err)
		}
	case <-time.After(d):
		tb.Fatalf("%s still running after %v", p.Cmd.Path, d)
	}
}

// WaitOutput waits until the process has written s, and fails tb early if
// it exits without.
func (p *Process) WaitOutput(tb testing.TB, d time.Duration, s string) {
	tb.Helper()
	WaitFor(tb, d, "output "+s, func() string {
		if strings.Contains(p.Output(), s) {
			return ""
		}
		if p.Exited() && !strings.Contains(p.Output(), s) {
			tb.Fatalf("%s exited (%v) without writing %q", p.Cmd.Path, p.err, s)
		}
		return "not written yet"
	})
}
