package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"

	"golang.org/x/time/rate"
)

// newLogger builds the daemon's slog logger from LOG_FORMAT and LOG_LEVEL.
func newLogger(cfg Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// logLimiter lets through a few lines a second of one kind, so a flood of
// bad input cannot fill the disk, and reports how many it held back.
type logLimiter struct {
	limiter    *rate.Limiter
	suppressed atomic.Uint64
}

func newLogLimiter(perSecond float64, burst int) *logLimiter {
	return &logLimiter{limiter: rate.NewLimiter(rate.Limit(perSecond), burst)}
}

// log writes the line when the limiter allows it, with the number of lines
// suppressed since the last one written.
func (l *logLimiter) log(logger *slog.Logger, level slog.Level, msg string, args ...any) {
	if !l.limiter.Allow() {
		l.suppressed.Add(1)
		return
	}
	if n := l.suppressed.Swap(0); n > 0 {
		args = append(args, "suppressed_since_last", n)
	}
	logger.Log(context.Background(), level, msg, args...)
}

// redisLogger routes go-redis's internal messages to slog at warn level,
// rate-limited: while Redis is down it would otherwise repeat itself. The
// messages that only repeat an error go-redis also returns to its caller
// (redisEchoes), whose own line says it, go to debug level: one line per
// failure.
type redisLogger struct {
	logger  *slog.Logger
	limiter *logLimiter
}

// redisEchoes start the go-redis messages that repeat an error it returns
// too: a dial that failed ("redis: connection pool: failed to dial after 1
// attempts: dial tcp …: connection refused") fails the command that
// needed the connection, and the daemon logs that command's error.
var redisEchoes = []string{"redis: connection pool: failed to dial after "}

func (r redisLogger) Printf(_ context.Context, format string, v ...any) {
	msg := strings.TrimSpace(fmt.Sprintf(format, v...))
	level := slog.LevelWarn
	for _, echo := range redisEchoes {
		if strings.HasPrefix(msg, echo) {
			level = slog.LevelDebug
		}
	}
	if !r.logger.Enabled(context.Background(), level) {
		// Not spent from the limiter: the warnings keep their share.
		return
	}
	r.limiter.log(r.logger, level, "go-redis", "detail", msg)
}
