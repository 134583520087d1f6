package redisx

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/internal/testproc"
)

func TestTLSDialerNamesARedisWithoutTLSWithinTheHandshakeTimeout(t *testing.T) {
	t.Parallel()
	plain := testproc.StartRedis(t).Addr()
	dial := TLSDialer(&tls.Config{MinVersion: tls.VersionTLS12}, "REDIS_TLS")
	// A plain Redis mostly waits for the rest of a line; a ClientHello
	// with a newline among its random bytes gets an error reply instead.
	for range 2 {
		start := time.Now()
		conn, err := dial(context.Background(), "tcp", plain)
		took := time.Since(start)
		if err == nil {
			conn.Close()
			t.Fatal("a TLS handshake with a plain Redis succeeded")
		}
		tlsErr, ok := errors.AsType[*TLSError](err)
		if !ok || tlsErr.Addr != plain || took > TLSHandshakeTimeout+time.Second {
			t.Fatalf("after %v: %v (%T), want a *TLSError for %s within %v", took, err, err, plain, TLSHandshakeTimeout)
		}
		if msg := err.Error(); !strings.HasPrefix(msg, "redis at "+plain+" ") || !strings.HasSuffix(msg, ": is REDIS_TLS right?") {
			t.Fatalf("message %q", msg)
		}
		t.Logf("%v: %v", took.Round(time.Millisecond), err)
	}
}

func TestCheckSeedsChecksOneRedisForTLSOnly(t *testing.T) {
	t.Parallel()
	plain := testproc.StartRedis(t).Addr()
	config := &tls.Config{MinVersion: tls.VersionTLS12}
	opts := redis.Options{Addr: plain, TLSConfig: config, Dialer: TLSDialer(config, "REDIS_TLS")}
	start := time.Now()
	err := CheckSeeds(context.Background(), Deployment{}, opts)
	if _, ok := errors.AsType[*TLSError](err); !ok || time.Since(start) > SeedCheckTimeout+time.Second {
		t.Fatalf("after %v: %v, want a *TLSError", time.Since(start), err)
	}
	// A Redis that is down may come up later: not an error at start-up.
	opts.Addr = closedAddr(t)
	if err := CheckSeeds(context.Background(), Deployment{}, opts); err != nil {
		t.Fatalf("a Redis that is down: %v", err)
	}
	// Without TLS, a plain Redis is what was asked for.
	if err := CheckSeeds(context.Background(), Deployment{}, redis.Options{Addr: plain}); err != nil {
		t.Fatalf("plain Redis without TLS: %v", err)
	}
	// Cluster seeds say it in their reason.
	err = CheckSeeds(context.Background(), Deployment{ClusterAddrs: []string{plain}}, opts)
	if seedErr, ok := errors.AsType[*SeedError](err); !ok || !strings.Contains(seedErr.Why, "is REDIS_TLS right?") {
		t.Fatalf("cluster seed without TLS: %v", err)
	}
}
