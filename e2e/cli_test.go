package e2e

import (
	"debug/buildinfo"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"fanout/internal/testproc"
)

// The binary as a command line: help, version and mistakes answer at once
// and start nothing; fanout token and fanout tail work with a real daemon.

// connectRecorder is a TCP listener standing in for Redis: it counts the
// connections made to it and closes them.
type connectRecorder struct {
	ln      net.Listener
	accepts atomic.Int64
}

// recordConnects listens on a free loopback port until t's cleanup.
func recordConnects(t *testing.T) *connectRecorder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec := &connectRecorder{ln: ln}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			rec.accepts.Add(1)
			_ = conn.Close()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
	})
	return rec
}

// accepting reports whether something accepts TCP connections at addr.
func accepting(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
	if err != nil {
		return false
	}
	_ = conn.Close()
	return true
}

// cliRun is how one command line of the binary went.
type cliRun struct {
	code           int
	stdout, stderr string
	// listened: something accepted connections on PORT or ADMIN_ADDR
	// while it ran; redisConnects: connections made to its Redis.
	listened      bool
	redisConnects int64
}

// runStartingNothing runs the binary with args, PORT and ADMIN_ADDR on
// free ports and Redis at a connectRecorder, watching both ports until it
// exits, which it must within 10 s.
func runStartingNothing(t *testing.T, bin string, args ...string) cliRun {
	t.Helper()
	redis := recordConnects(t)
	port, adminPort := testproc.FreePort(t), testproc.FreePort(t)
	_, redisPort, _ := net.SplitHostPort(redis.ln.Addr().String())
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "PORT="+strconv.Itoa(port), "LISTEN_HOST=127.0.0.1", "ADMIN_ADDR="+testproc.Addr(adminPort),
		"REDIS_HOST=127.0.0.1", "REDIS_PORT="+redisPort)
	var stdout, stderr testproc.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	p := testproc.Start(t, cmd)
	run := cliRun{}
	deadline := time.After(10 * time.Second)
	for exited := false; !exited; {
		run.listened = run.listened || accepting(testproc.Addr(port)) || accepting(testproc.Addr(adminPort))
		select {
		case <-p.Done():
			exited = true
		case <-deadline:
			t.Fatalf("fanout %s: still running after 10 s (listening: %v); want an answer at once\n%s%s",
				strings.Join(args, " "), run.listened, stdout.String(), stderr.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
	run.stdout, run.stderr = stdout.String(), stderr.String()
	run.redisConnects = redis.accepts.Load()
	var exit *exec.ExitError
	switch err := p.Err(); {
	case err == nil:
	case errors.As(err, &exit):
		run.code = exit.ExitCode()
	default:
		t.Fatalf("fanout %s: %v", strings.Join(args, " "), err)
	}
	return run
}

// wantVersionLine is the line fanout version prints for bin: its version
// (the e2e build sets none), the commit its build recorded and its Go.
func wantVersionLine(t *testing.T, bin string) string {
	t.Helper()
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	commit, dirty := "unknown", false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			commit = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && commit != "unknown" {
		commit += "-dirty"
	}
	return "fanout dev, commit " + commit + ", " + info.GoVersion + " "
}

func TestHelpVersionAndMistakesExitAtOnceListeningNowhereAndLeavingRedisAlone(t *testing.T) {
	bin := fanoutBinary(t)
	t.Parallel()
	// The instruments see the daemon itself listen and dial Redis.
	{
		redis := recordConnects(t)
		port := testproc.FreePort(t)
		_, redisPort, _ := net.SplitHostPort(redis.ln.Addr().String())
		cmd := exec.Command(bin, "serve")
		cmd.Env = append(os.Environ(), "PORT="+strconv.Itoa(port), "LISTEN_HOST=127.0.0.1", "ADMIN_ADDR="+testproc.Addr(testproc.FreePort(t)),
			"REDIS_HOST=127.0.0.1", "REDIS_PORT="+redisPort)
		p := testproc.Start(t, cmd)
		testproc.Eventually(t, 10*time.Second, "fanout serve listening and dialling Redis", func() bool {
			return accepting(testproc.Addr(port)) && redis.accepts.Load() > 0
		})
		p.Kill()
	}

	versionLine := wantVersionLine(t, bin)
	cases := []struct {
		args []string
		code int
		// stdout must start with it; stderr must be one line holding it.
		stdout, stderr string
	}{
		{[]string{"help"}, 0, "usage: fanout", ""},
		{[]string{"-h"}, 0, "usage: fanout", ""},
		{[]string{"--help"}, 0, "usage: fanout", ""},
		{[]string{"serve", "--help"}, 0, "usage: fanout [serve]", ""},
		{[]string{"tail", "--help"}, 0, "usage: fanout tail", ""},
		{[]string{"token", "-h"}, 0, "usage: fanout token", ""},
		{[]string{"publish", "--help"}, 0, "usage: fanout publish", ""},
		{[]string{"version"}, 0, versionLine, ""},
		{[]string{"--version"}, 0, versionLine, ""},
		{[]string{"--bogus"}, 2, "", "--bogus"},
		{[]string{"--port", "1"}, 2, "", "--port"},
		{[]string{"nosuchcommand"}, 2, "", "nosuchcommand"},
		{[]string{"srve"}, 2, "", "srve"},
		{[]string{"serve", "--port", "1"}, 2, "", "--port"},
	}
	for _, tc := range cases {
		line := "fanout " + strings.Join(tc.args, " ")
		run := runStartingNothing(t, bin, tc.args...)
		if run.code != tc.code {
			t.Errorf("%s: exit %d, want %d (stderr %q)", line, run.code, tc.code, run.stderr)
		}
		if run.listened || run.redisConnects > 0 {
			t.Errorf("%s: started something: listening %v, %d Redis connections", line, run.listened, run.redisConnects)
		}
		if !strings.HasPrefix(run.stdout, tc.stdout) || (tc.stdout == "" && run.stdout != "") {
			t.Errorf("%s: stdout %q, want it to start with %q", line, run.stdout, tc.stdout)
		}
		if tc.stderr == "" && run.stderr != "" {
			t.Errorf("%s: stderr %q, want nothing", line, run.stderr)
		}
		if tc.stderr != "" && (strings.Count(run.stderr, "\n") != 1 || !strings.Contains(run.stderr, tc.stderr) || !strings.Contains(run.stderr, "fanout help")) {
			t.Errorf("%s: stderr %q, want one line naming %s and pointing at fanout help", line, run.stderr, tc.stderr)
		}
	}
}

func TestTokenFromTheCommandIsAcceptedByADaemonWithTheSameSecret(t *testing.T) {
	bin := fanoutBinary(t)
	t.Parallel()
	r := testproc.StartRedis(t)
	env := jwtEnv(nil)
	cmd := exec.Command(bin, "token", "--username", "alice", "--groups", "acme", "--ttl", "5m")
	cmd.Env = append(os.Environ(), envOf(env)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("fanout token: %v: %s", err, stderr.String())
	}
	token := strings.TrimSpace(string(out))

	td := startDaemon(t, r, env)
	td.waitReady()
	bearer := http.Header{"Authorization": {"Bearer " + token}}
	own := dialWS(t, td.wsURL, bearer)
	group := dialWS(t, td.wsURL+"?username=acme", bearer)
	testproc.Eventually(t, 5*time.Second, "both connections registered", func() bool {
		return td.connectionCount("alice") == 1 && td.connectionCount("acme") == 1
	})
	td.publish("alice", `{"type":"for-alice"}`)
	td.publish("acme", `{"type":"for-acme"}`)
	if got := readText(t, own, 5*time.Second); got != `{"type":"for-alice"}` {
		t.Fatalf("alice's connection got %q", got)
	}
	if got := readText(t, group, 5*time.Second); got != `{"type":"for-acme"}` {
		t.Fatalf("the acme connection got %q", got)
	}
}

func TestTailPrintsAnEventPublishedThroughADaemon(t *testing.T) {
	bin := fanoutBinary(t)
	t.Parallel()
	r := testproc.StartRedis(t)
	td := startDaemon(t, r, nil)
	td.waitReady()
	cmd := exec.Command(bin, "tail", "--url", td.wsURL, "--username", "bob", "--count", "1", "--timeout", "20s")
	var stdout testproc.Buffer
	cmd.Stdout = &stdout
	p := testproc.Start(t, cmd)
	p.WaitOutput(t, 10*time.Second, "fanout tail: connected to")
	testproc.Eventually(t, 5*time.Second, "bob's connection registered", func() bool { return td.connectionCount("bob") == 1 })
	td.publish("bob", `{"type":"test","message":"hello"}`)
	p.WaitExit(t, 10*time.Second)
	if got := stdout.String(); got != "{\"type\":\"test\",\"message\":\"hello\"}\n" {
		t.Fatalf("stdout %q, want the event on one line", got)
	}
}
