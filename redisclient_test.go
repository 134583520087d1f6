package main

import (
	"testing"
	"time"

	"fanout/internal/redisx"
	"fanout/internal/testproc"
)

// passwordWarning starts the warning of a password Redis does not check.
const passwordWarning = "A Redis password is set (REDIS_PASSWORD or REDIS_URL) but Redis requires none"

func TestPasswordRedisDoesNotCheckIsWarnedOnceWhenRedisAnswers(t *testing.T) {
	t.Parallel()
	// After the daemon stops: go-redis's pool probes an address whose
	// dials failed in a goroutine that ends a second later.
	t.Cleanup(func() { testproc.WaitDialProbesDone(time.Now().Add(3 * time.Second)) })
	r := redisAt(t) // comes up after the daemon, as under start.sh or Docker
	td := startDaemon(t, r, map[string]string{"REDIS_PASSWORD": "not-needed-pw", "LOG_LEVEL": "info"})
	eventually(t, 10*time.Second, "retries logged", func() bool {
		return countLines(td.logs.String(), "Redis subscription failed; retrying") >= 2
	})
	if n := countLines(td.logs.String(), passwordWarning); n != 0 {
		t.Fatalf("warned %d times before Redis answered", n)
	}
	r.start() // without requirepass
	td.waitReady()
	eventually(t, 10*time.Second, "the warning", func() bool { return countLines(td.logs.String(), passwordWarning) == 1 })
	// Once: after a restart of Redis, and while the daemon runs.
	r.kill()
	r.start()
	td.waitReady()
	if n := countLines(td.logs.String(), passwordWarning); n != 1 {
		t.Fatalf("warned %d times, want once", n)
	}
	if logs := td.logs.String(); countLines(logs, "not-needed-pw") != 0 {
		t.Fatalf("logs name the password:\n%s", logs)
	}
}

func TestPasswordRedisChecksIsNotWarned(t *testing.T) {
	t.Parallel()
	r := redisAt(t)
	r.Password, r.Args = "needed-pw", []string{"--requirepass", "needed-pw"}
	r.start()
	td := startDaemon(t, r, map[string]string{"REDIS_PASSWORD": "needed-pw", "LOG_LEVEL": "info"})
	td.waitReady()
	// The check's own answer, as the daemon asks it.
	if open, err := redisx.AcceptsWithoutPassword(t.Context(), deployment(td.d.cfg), *td.d.cfg.Redis); err != nil || open {
		t.Fatalf("a Redis with requirepass: accepts without password %v, %v", open, err)
	}
	if n := countLines(td.logs.String(), passwordWarning); n != 0 {
		t.Fatalf("warned %d times about a password Redis checks", n)
	}
}
