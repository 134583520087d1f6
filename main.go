// Command fanout holds browsers' WebSocket connections and pushes to each
// user the workflow events published in Redis on workflow:events:{username}.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	cfg, err := loadConfig(os.Getenv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fanout: configuration: %v\n", err)
		os.Exit(2)
	}
	logger := newLogger(cfg, os.Stdout)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// After the first signal, a second one kills the process at once.
	context.AfterFunc(ctx, stop)

	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		logger.Error("Cannot listen", "addr", cfg.ListenAddr, "err", err)
		os.Exit(1)
	}
	if err := newDaemon(cfg, logger).run(ctx, ln); err != nil {
		logger.Error("Stopped with an error", "err", err)
		os.Exit(1)
	}
}

// daemon wires the hub, the Redis subscriber and the HTTP server together.
type daemon struct {
	cfg    Config
	logger *slog.Logger
	stats  *Stats
	rdb    *redis.Client
	hub    *Hub
	sub    *Subscriber
	server *Server
}

func newDaemon(cfg Config, logger *slog.Logger) *daemon {
	stats := &Stats{}
	opts := *cfg.Redis
	// Failing fast lets the subscriber's own backoff decide when to retry.
	opts.MaxRetries = -1
	opts.DialTimeout = 2 * time.Second
	rdb := redis.NewClient(&opts)
	hub := newHub(clientSettings{
		sendQueueSize:  cfg.SendQueueSize,
		sendQueueBytes: cfg.SendQueueBytes,
		pingInterval:   cfg.PingInterval,
		pongWait:       cfg.PongWait,
		writeWait:      cfg.WriteWait,
	}, logger, stats)
	sub := newSubscriber(rdb, hub, cfg, logger, stats)
	return &daemon{
		cfg:    cfg,
		logger: logger,
		stats:  stats,
		rdb:    rdb,
		hub:    hub,
		sub:    sub,
		server: newServer(hub, cfg, logger, stats, sub.ready),
	}
}

// redisLogOnce routes go-redis's package-level logger to slog once per process.
var redisLogOnce sync.Once

// run serves on ln until ctx ends, then shuts down gracefully within
// ShutdownTimeout: it stops accepting, stops the subscriber and sends every
// client a going-away close frame. It owns every goroutine it starts.
func (d *daemon) run(ctx context.Context, ln net.Listener) error {
	redisLogOnce.Do(func() {
		redis.SetLogger(redisLogger{logger: d.logger, limiter: newLogLimiter(1, 5)})
	})
	d.logger.Info("Starting fanout", "version", version, "addr", ln.Addr().String(),
		"redis", d.cfg.Redis.Addr, "pattern", channelPattern)

	subCtx, stopSub := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { d.sub.run(subCtx) })

	httpServer := &http.Server{
		Handler:           d.server.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(d.logger.Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 1)
	wg.Go(func() { serveErr <- httpServer.Serve(ln) })

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("serve %s: %w", ln.Addr(), err)
	}

	d.logger.Info("Shutting down", "connections", d.hub.connections.Load(), "timeout", d.cfg.ShutdownTimeout)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), d.cfg.ShutdownTimeout)
	defer cancel()
	if serr := httpServer.Shutdown(shutdownCtx); serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		d.logger.Warn("HTTP shutdown incomplete", "err", serr)
	}
	stopSub()
	if herr := d.hub.shutdown(shutdownCtx); herr != nil {
		d.logger.Warn("Some clients did not close in time; dropped them", "err", herr)
	}
	wg.Wait()
	_ = d.rdb.Close()
	d.logger.Info("Stopped", d.stats.logValues()...)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
