package redisx

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"
)

// TLSHandshakeTimeout bounds a TLS handshake with Redis. A Redis without
// TLS never answers the ClientHello: without this bound a dial would wait
// for its whole timeout, once per retry, and end in a bare "context
// deadline exceeded".
const TLSHandshakeTimeout = 2 * time.Second

// TLSError says that the Redis at Addr does not speak TLS although the
// configuration asks for it: a setting that is wrong, and that waiting
// will not fix.
type TLSError struct {
	// Addr is the address dialed.
	Addr string
	// Variable names the setting that asked for TLS: REDIS_TLS, or
	// REDIS_URL with rediss://.
	Variable string
	// Why is what the server did, such as "did not answer the TLS
	// handshake within 2s".
	Why string
}

func (e *TLSError) Error() string {
	return fmt.Sprintf("redis at %s %s: is %s right?", e.Addr, e.Why, e.Variable)
}

// keepAlive is go-redis's own dialers' TCP keep-alive policy.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 5 * time.Second, Count: 3}

// TLSDialer returns a go-redis Dialer that connects with config, as
// go-redis's own does, but bounds the handshake by TLSHandshakeTimeout
// (and ctx, which go-redis bounds by the dial timeout) and answers a
// server that does not speak TLS with a *TLSError naming variable.
func TLSDialer(config *tls.Config, variable string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialer := net.Dialer{KeepAliveConfig: keepAlive}
		raw, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		c := config
		if c.ServerName == "" {
			// As tls.DialWithDialer: the name to verify is the host dialed.
			if host, _, err := net.SplitHostPort(addr); err == nil {
				c = c.Clone()
				c.ServerName = host
			}
		}
		hctx, cancel := context.WithTimeout(ctx, TLSHandshakeTimeout)
		defer cancel()
		start := time.Now()
		conn := tls.Client(raw, c)
		if err := conn.HandshakeContext(hctx); err != nil {
			_ = raw.Close()
			return nil, handshakeError(addr, variable, time.Since(start), err)
		}
		return conn, nil
	}
}

// handshakeError says what a failed handshake with addr means.
func handshakeError(addr, variable string, took time.Duration, err error) error {
	var record tls.RecordHeaderError
	var netErr net.Error
	switch {
	case errors.As(err, &record):
		// A server that answers the ClientHello with something other
		// than a TLS record: a Redis without TLS replying with an error.
		return &TLSError{Addr: addr, Variable: variable, Why: "answered the TLS handshake in plain text (a Redis without TLS)"}
	case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET):
		// One that rejected the ClientHello as a bad request.
		return &TLSError{Addr: addr, Variable: variable, Why: "closed the connection on the TLS handshake"}
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &netErr) && netErr.Timeout():
		return &TLSError{Addr: addr, Variable: variable, Why: fmt.Sprintf("did not answer the TLS handshake within %s", roundTook(took))}
	}
	return fmt.Errorf("TLS handshake with %s: %w", addr, err)
}

// roundTook rounds a wait for a message: 2s, 400ms.
func roundTook(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(time.Second)
	}
	return d.Round(100 * time.Millisecond)
}

// CheckTLS dials addr once with dial, a TLSDialer, and returns the
// *TLSError it met: a Redis that is up but does not speak TLS. Any other
// outcome is nil, a Redis that is down among them: it may come up later.
func CheckTLS(ctx context.Context, addr string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) error {
	ctx, cancel := context.WithTimeout(ctx, SeedCheckTimeout)
	defer cancel()
	conn, err := dial(ctx, "tcp", addr)
	if err == nil {
		_ = conn.Close()
		return nil
	}
	if tlsErr, ok := errors.AsType[*TLSError](err); ok {
		return tlsErr
	}
	return nil
}
