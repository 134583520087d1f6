package main

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestRedisFailureLogsOneLinePerRetry(t *testing.T) {
	t.Parallel()
	down := strconv.Itoa(freePort(t)) // nothing listens there
	p := startProcess(t, daemonCommand(t, "REDIS_HOST=127.0.0.1", "REDIS_PORT="+down,
		"LISTEN_HOST=127.0.0.1", "PORT="+strconv.Itoa(freePort(t)), "LOG_LEVEL=info", "REDIS_RETRY_MAX=200ms"))
	const retry = "Redis subscription failed; retrying"
	eventually(t, 10*time.Second, "retries logged", func() bool { return countLines(p.logs.String(), retry) >= 6 })
	logs := p.logs.String()
	var failures []string
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "level=WARN") && !strings.Contains(line, "PROTECTED MODE") {
			failures = append(failures, line)
		}
	}
	for _, line := range failures {
		// One line per failure, which says why: no go-redis line repeats it.
		if !strings.Contains(line, retry) || !strings.Contains(line, "127.0.0.1:"+down+": connect: connection refused") {
			t.Errorf("a warning that is not the one line of a failed retry, with its cause: %s", line)
		}
	}
	if t.Failed() {
		t.Logf("logs:\n%s", logs)
	}
}

func TestRedisLoggerKeepsGoRedisLinesButTheEchoesOfReturnedErrors(t *testing.T) {
	var out syncBuffer
	for _, level := range []slog.Level{slog.LevelInfo, slog.LevelDebug} {
		logger := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: level}))
		rl := redisLogger{logger: logger, limiter: newLogLimiter(1, 5)}
		rl.Printf(context.Background(), "redis: connection pool: failed to dial after %d attempts: %v", 1, "dial tcp 127.0.0.1:1: connect: connection refused")
		rl.Printf(context.Background(), "sentinel: GetMasterAddrByName name=%q failed: %s", "events", "i/o timeout")
	}
	logs := out.String()
	if countLines(logs, "failed to dial") != 1 || countLines(logs, "level=DEBUG msg=go-redis") != 1 {
		t.Errorf("the dial echo: want one line, at debug level only:\n%s", logs)
	}
	if countLines(logs, "level=WARN msg=go-redis detail=\"sentinel: GetMasterAddrByName") != 2 {
		t.Errorf("go-redis's other lines: want a warning at each level:\n%s", logs)
	}
}
