package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"fanout/internal/testproc"
)

// start.sh checks the variables it uses itself (REDIS_HOST, REDIS_PORT, PORT)
// before it starts or builds anything, and says what is wrong in the
// daemon's own words. These tests run it for real, from a copy of the
// script in a temporary tree, with redis-server, go and apt-get replaced
// by stand-ins that only write down that they ran.

// startScriptRun is one run of start.sh in a scratch tree.
type startScriptRun struct {
	exitCode int
	stdout   string
	stderr   string
	// ran lists the stand-ins start.sh ran, one "name args…" line each.
	ran []string
	// wrote lists what start.sh left in its tree beside its own files.
	wrote []string
}

// runStartScript runs a copy of start.sh with only PATH, HOME and env set.
func runStartScript(t *testing.T, env map[string]string) startScriptRun {
	t.Helper()
	tree := t.TempDir()
	for _, file := range []string{"start.sh", "scripts/ensure.sh"} {
		body, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(tree, file)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, body, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	stands := t.TempDir()
	ranLog := filepath.Join(stands, "ran.log")
	for _, name := range []string{"redis-server", "go", "apt-get"} {
		script := "#!/bin/sh\necho \"$(basename \"$0\") $*\" >> " + strconv.Quote(ranLog) + "\nexit 1\n"
		if err := os.WriteFile(filepath.Join(stands, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(tree, "start.sh"))
	cmd.Env = []string{"PATH=" + stands + ":/usr/bin:/bin", "HOME=" + t.TempDir()}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("start.sh with %v still ran after 20 s; it printed:\n%s%s", env, stdout.String(), stderr.String())
	}
	run := startScriptRun{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		run.exitCode = exit.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	if log, err := os.ReadFile(ranLog); err == nil {
		run.ran = strings.Split(strings.TrimSuffix(string(log), "\n"), "\n")
	}
	entries, err := os.ReadDir(tree)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if name := e.Name(); name != "start.sh" && name != "scripts" {
			run.wrote = append(run.wrote, name)
		}
	}
	return run
}

func TestStartScriptRefusesAWrongRedisPortLikeTheDaemonBeforeStartingAnything(t *testing.T) {
	t.Parallel()
	var envs []map[string]string
	for _, port := range []string{"abc", "0", "-1", "65536", "99999999999999999999", "6379x", "1e3", " 70000 ", "+0", `a"b\c`} {
		envs = append(envs, map[string]string{"REDIS_PORT": port})
	}
	// The daemon's own port, before a Redis is started for it.
	for _, port := range []string{"abc", "0", "70000", " 8084x "} {
		envs = append(envs, map[string]string{"PORT": port})
	}
	// A Redis deployment variable set to nothing, as the daemon refuses it.
	for _, name := range []string{"REDIS_URL", "REDIS_HOST", "REDIS_SENTINEL_ADDRS", "REDIS_SENTINEL_MASTER", "REDIS_CLUSTER_ADDRS"} {
		envs = append(envs, map[string]string{name: " "})
	}
	for _, env := range envs {
		t.Run(fmt.Sprint(env), func(t *testing.T) {
			t.Parallel()
			_, err := loadConfig(envOf(env))
			if err == nil {
				t.Fatalf("the daemon accepts %v; this test wants values it refuses", env)
			}
			run := runStartScript(t, env)
			// The line the daemon prints (main.go) for the same setting.
			want := "fanout: configuration: " + err.Error() + "\n"
			if run.exitCode != 2 || run.stderr != want || run.stdout != "" {
				t.Fatalf("%v: exit %d, stdout %q, stderr %q; want exit 2 and only the daemon's line %q", env, run.exitCode, run.stdout, run.stderr, want)
			}
			if len(run.ran) != 0 || len(run.wrote) != 0 {
				t.Fatalf("%v: start.sh ran %q and wrote %q; want nothing started, built or written", env, run.ran, run.wrote)
			}
		})
	}
}

func TestStartScriptReadsRedisHostAndPortAsTheDaemonDoes(t *testing.T) {
	t.Parallel()
	free := testproc.FreePort(t) // nothing answers there: start.sh starts a local Redis
	cases := []struct {
		name string
		env  map[string]string
		// ran is the first thing start.sh runs once past its checks.
		ran string
	}{
		{"padded", map[string]string{"REDIS_PORT": " " + strconv.Itoa(free) + " "}, "redis-server --port " + strconv.Itoa(free) + " "},
		{"sign and leading zeros", map[string]string{"REDIS_PORT": "+0" + strconv.Itoa(free)}, "redis-server --port " + strconv.Itoa(free) + " "},
		// With REDIS_URL the daemon reads neither REDIS_HOST nor REDIS_PORT.
		{"REDIS_URL wins", map[string]string{"REDIS_URL": "redis://127.0.0.1:" + strconv.Itoa(free), "REDIS_PORT": "abc"}, "go build "},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := loadConfig(envOf(tc.env)); err != nil {
				t.Fatalf("the daemon refuses %v: %v; this test wants settings it accepts", tc.env, err)
			}
			run := runStartScript(t, tc.env)
			if strings.Contains(run.stderr, "configuration") || run.exitCode == 2 {
				t.Fatalf("%v: exit %d, stderr %q; the daemon accepts these settings", tc.env, run.exitCode, run.stderr)
			}
			if len(run.ran) == 0 || !strings.HasPrefix(run.ran[0], tc.ran) {
				t.Fatalf("%v: start.sh ran %q, want first %q…", tc.env, run.ran, tc.ran)
			}
		})
	}
}
