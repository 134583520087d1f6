package testproc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// QueryTimeout bounds each command Query sends.
const QueryTimeout = 2 * time.Second

// Redis is a redis-server on a loopback port, owned by one test: it can be
// killed and started again on the same port, and is stopped by the test's
// cleanup.
type Redis struct {
	tb   testing.TB
	Port int
	// TLS, when set, is the client config of a TLS-only server.
	TLS *tls.Config
	// Password is the server's requirepass, if any.
	Password string
	// Args are the options every start adds to the defaults.
	Args []string

	mu   sync.Mutex
	proc *Process
}

// StartRedis starts a redis-server (no persistence) with args on a free
// loopback port.
func StartRedis(tb testing.TB, args ...string) *Redis {
	tb.Helper()
	NeedTool(tb, "redis-server")
	var lastErr error
	for range 5 {
		r := NewRedis(tb, FreePort(tb))
		r.Args = args
		if lastErr = r.Start(); lastErr == nil {
			return r
		}
	}
	tb.Fatalf("start redis-server: %v", lastErr)
	return nil
}

// NewRedis returns a Redis for port with nothing running on it yet; Start
// brings it up.
func NewRedis(tb testing.TB, port int) *Redis {
	return &Redis{tb: tb, Port: port}
}

// Addr is the server's host:port.
func (r *Redis) Addr() string { return Addr(r.Port) }

// Start (re)starts redis-server on r's port with r.Args and waits until it
// answers PING.
func (r *Redis) Start() error {
	args := []string{
		"--port", strconv.Itoa(r.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no",
		"--loglevel", "warning",
	}
	if r.TLS != nil {
		args[0], args[1] = "--tls-port", strconv.Itoa(r.Port)
		args = append(args, "--port", "0")
	}
	p, err := start(r.tb, exec.Command("redis-server", append(args, r.Args...)...))
	if err != nil {
		return err
	}
	client := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1, TLSConfig: r.TLS, Password: r.Password})
	defer client.Close()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if p.Exited() {
			return fmt.Errorf("redis-server exited: %s", strings.TrimSpace(p.Output()))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := client.Ping(ctx).Err()
		cancel()
		if err == nil {
			r.mu.Lock()
			r.proc = p
			r.mu.Unlock()
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.Kill()
	return errors.New("redis-server did not answer PING within 10s")
}

// Restart is Start that fails the owning test when the server does not
// come up.
func (r *Redis) Restart() {
	r.tb.Helper()
	if err := r.Start(); err != nil {
		r.tb.Fatalf("start redis-server on %s: %v", r.Addr(), err)
	}
}

// Kill stops redis-server at once, as a crash would.
func (r *Redis) Kill() {
	r.mu.Lock()
	p := r.proc
	r.proc = nil
	r.mu.Unlock()
	if p != nil {
		p.Kill()
	}
}

// Running reports whether the server was started and has neither been
// killed nor exited.
func (r *Redis) Running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.proc != nil && !r.proc.Exited()
}

// Client returns a go-redis client of the server, closed at cleanup.
func (r *Redis) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: r.Addr(), TLSConfig: r.TLS, Password: r.Password})
	r.tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Query runs one command on addr over a fresh connection and closes it.
func Query(addr string, args ...any) (any, error) {
	client := redis.NewClient(&redis.Options{
		Addr: addr, MaxRetries: -1, DialTimeout: 500 * time.Millisecond,
		ReadTimeout: QueryTimeout, WriteTimeout: QueryTimeout,
	})
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), QueryTimeout)
	defer cancel()
	return client.Do(ctx, args...).Result()
}

// QueryText is Query for commands that answer one string.
func QueryText(addr string, args ...any) (string, error) {
	reply, err := Query(addr, args...)
	if err != nil {
		return "", err
	}
	text, ok := reply.(string)
	if !ok {
		return "", fmt.Errorf("%v on %s: reply %T, want a string", args, addr, reply)
	}
	return text, nil
}

// InfoField returns field of an INFO or CLUSTER INFO text ("" if absent).
func InfoField(info, field string) string {
	for _, line := range strings.Split(info, "\n") {
		if value, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(value)
		}
	}
	return ""
}
