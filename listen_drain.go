package main

import (
	"context"
	"net"
	"net/http"
	"sync"
	"time"
)

// freshWait bounds how long a shutdown waits for the connections accepted
// just before it to send their first request.
const freshWait = time.Second

// freshConns counts the connections the HTTP server has accepted whose
// first request has not reached a handler yet. net/http's Shutdown drops
// such a connection's request unanswered when it arrives (the client reads
// EOF), so the daemon first stops accepting (with socket activation the
// connections not accepted yet wait in the socket for the next process),
// waits for these to reach a handler, and only then shuts the server down.
type freshConns struct {
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	// drained is closed, while a shutdown waits, when none is left.
	drained chan struct{}
}

func newFreshConns() *freshConns {
	return &freshConns{conns: make(map[net.Conn]struct{})}
}

type freshConnKey struct{}

// connState is the server's ConnState hook: a new connection is fresh
// until its first request reaches the handler, or it closes first.
func (f *freshConns) connState(c net.Conn, state http.ConnState) {
	switch state {
	case http.StateNew:
		f.mu.Lock()
		f.conns[c] = struct{}{}
		f.mu.Unlock()
	case http.StateClosed, http.StateHijacked:
		f.done(c)
	}
}

// connContext is the server's ConnContext hook: the handler finds its
// connection in the request's context.
func (f *freshConns) connContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, freshConnKey{}, c)
}

// handler marks each request's connection as no longer fresh, then serves
// it with next.
func (f *freshConns) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, ok := r.Context().Value(freshConnKey{}).(net.Conn); ok {
			f.done(c)
		}
		next.ServeHTTP(w, r)
	})
}

func (f *freshConns) done(c net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.conns[c]; !ok {
		return
	}
	delete(f.conns, c)
	if len(f.conns) == 0 && f.drained != nil {
		close(f.drained)
		f.drained = nil
	}
}

// count returns how many connections are fresh.
func (f *freshConns) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns)
}

// wait returns once no connection is fresh, after at most d or when ctx
// ends. The listener must be closed first, or new ones keep coming.
func (f *freshConns) wait(ctx context.Context, d time.Duration) {
	f.mu.Lock()
	if len(f.conns) == 0 {
		f.mu.Unlock()
		return
	}
	drained := make(chan struct{})
	f.drained = drained
	f.mu.Unlock()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-drained:
	case <-timer.C:
	case <-ctx.Done():
	}
}

// onceCloseListener closes its listener once: the daemon closes it to stop
// accepting before net/http's Shutdown closes it again.
type onceCloseListener struct {
	net.Listener
	once sync.Once
	err  error
}

func (l *onceCloseListener) Close() error {
	l.once.Do(func() { l.err = l.Listener.Close() })
	return l.err
}
