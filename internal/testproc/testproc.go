// Package testproc is the one owner of the processes tests run: it starts
// redis-server, Sentinel sets, Redis Clusters, fanout daemons and nginx on
// free loopback ports, collects their output, and stops every one of them
// (its whole process group) in the test's cleanup. WaitFor is the one
// polling helper; NeedTool and Missing say what to do when a tool is not
// installed: skip under -short, fail in the full run.
package testproc

import (
	"bytes"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Poll intervals of WaitFor: the first poll comes quickly, later ones back
// off so that a long wait does not hammer what it polls.
const (
	firstPoll = 5 * time.Millisecond
	maxPoll   = 50 * time.Millisecond
)

// WaitFor polls check until it returns "" and fails tb with what it last
// returned once d has passed.
func WaitFor(tb testing.TB, d time.Duration, what string, check func() string) {
	tb.Helper()
	deadline := time.Now().Add(d)
	pause := firstPoll
	for {
		problem := check()
		if problem == "" {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s: %s", d, what, problem)
		}
		time.Sleep(pause)
		pause = min(2*pause, maxPoll)
	}
}

// Eventually is WaitFor for a condition with nothing to report.
func Eventually(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	WaitFor(tb, d, what, func() string {
		if cond() {
			return ""
		}
		return "not yet"
	})
}

// Missing skips tb under -short and fails it otherwise: what is a tool the
// test needs and this machine lacks.
func Missing(tb testing.TB, what string) {
	tb.Helper()
	msg := what + " is not installed: run ./test.sh, which installs it"
	if testing.Short() {
		tb.Skip(msg)
	}
	tb.Fatal(msg)
}

// NeedTool returns the path of the executable name, looked up in PATH and
// in the sbin directories (Debian's nginx is /usr/sbin/nginx), or calls
// Missing.
func NeedTool(tb testing.TB, name string) string {
	tb.Helper()
	if path, err := exec.LookPath(name); err == nil {
		return path
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		path := dir + "/" + name
		if info, err := os.Stat(path); err == nil && !info.IsDir() && info.Mode()&0o111 != 0 {
			return path
		}
	}
	Missing(tb, name)
	return ""
}

// handedOut holds every port FreePort or Claim gave out in this test
// binary: a process takes a while to bind the port it was given, and in
// the meantime the kernel may offer the same free port to a parallel test.
var handedOut struct {
	sync.Mutex
	ports map[int]bool
}

// Claim records port as taken by the caller and reports whether nobody in
// this test binary had it yet.
func Claim(port int) bool {
	handedOut.Lock()
	defer handedOut.Unlock()
	if handedOut.ports == nil {
		handedOut.ports = make(map[int]bool)
	}
	if handedOut.ports[port] {
		return false
	}
	handedOut.ports[port] = true
	return true
}

// FreePort returns a loopback port that was free a moment ago and that no
// other test of this binary was given. It lies below the kernel's
// ephemeral range when there is room: a server started on it later (or
// started again after a kill) cannot find it taken by an outgoing
// connection or a listener on port 0 meanwhile.
func FreePort(tb testing.TB) int {
	tb.Helper()
	low := ephemeralLow()
	for range 100 {
		port := 0
		if low-1024 >= 2000 {
			port = low - 1 - rand.IntN(min(low-1024, 10000))
		}
		ln, err := net.Listen("tcp", Addr(port))
		if err != nil {
			if port == 0 {
				tb.Fatalf("find a free port: %v", err)
			}
			continue
		}
		port = ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if Claim(port) {
			return port
		}
	}
	tb.Fatal("find a free port: 100 tries gave ports in use or already handed out")
	return 0
}

// ephemeralLow is the first port of the kernel's ephemeral range.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 32768
	}
	low, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return low
}

// Addr is 127.0.0.1:port.
func Addr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// Buffer is a bytes.Buffer safe for concurrent writers.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
