// Command fanout holds browsers' WebSocket connections and pushes to each
// user the workflow events published in Redis on workflow:events:{username}.
// Without a command (or as `fanout serve`) it runs the daemon; `fanout help`
// lists its other commands (cli.go).
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
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/internal/redisx"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	os.Exit(runCommand(context.Background(), os.Args[1:], os.LookupEnv, os.Stdin, os.Stdout, os.Stderr))
}

// runServe runs the daemon (`fanout`, `fanout serve`) until SIGINT or
// SIGTERM, then returns; on a failure it exits the process itself: with
// status 2 for bad configuration, 1 when it cannot listen or start.
func runServe() {
	cfg, err := loadConfig(os.LookupEnv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fanout: configuration: %v\n", err)
		os.Exit(2)
	}
	// The seed check reports its failure in its one line; go-redis would add its own.
	redis.SetLogger(discardRedisLog{})
	if err := checkSeeds(context.Background(), cfg); err != nil {
		fmt.Fprintf(os.Stderr, "fanout: configuration: %v\n", err)
		os.Exit(2)
	}
	logger := newLogger(cfg, os.Stdout)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// After the first signal, a second one kills the process at once.
	context.AfterFunc(ctx, stop)

	ln, activated, err := listen(cfg.ListenAddr, os.LookupEnv)
	if err != nil {
		logger.Error("Cannot listen", "addr", cfg.ListenAddr, "err", err)
		os.Exit(1)
	}
	if activated {
		logger.Info("Serving on the socket systemd passed (socket activation); PORT is not used", "addr", ln.Addr().String())
	}
	var adminLn net.Listener
	if cfg.AdminAddr != "" {
		if adminLn, err = net.Listen("tcp", cfg.AdminAddr); err != nil {
			logger.Error("Cannot listen", "addr", cfg.AdminAddr, "variable", "ADMIN_ADDR", "err", err)
			os.Exit(1)
		}
	}
	d, err := newDaemon(cfg, logger)
	if err != nil {
		logger.Error("Cannot start", "err", err)
		os.Exit(1)
	}
	if err := d.run(ctx, ln, adminLn); err != nil {
		logger.Error("Stopped with an error", "err", err)
		os.Exit(1)
	}
}

// daemon wires the hub, the Redis subscriber and the HTTP server together.
type daemon struct {
	cfg    Config
	logger *slog.Logger
	stats  *Stats
	rdb    redis.UniversalClient
	// recordRdb is the recorder's client (nil with HISTORY=off).
	recordRdb redis.UniversalClient
	hub       *Hub
	// sub is the Redis subscription of the configured mode.
	sub subscription
	// presence keeps this instance's users in Redis (PRESENCE).
	presence presenceTracker
	// receipts writes the acks of this instance's clients (read receipts).
	receipts receiptTracker
	auth     *Authenticator
	server   *Server
	metrics  *metrics
	sampler  *statsSampler
	// id is this process's random name: in its probe channels, its Redis
	// client name and the recorder lease; instance names it in
	// /admin/stats: host and id.
	id       string
	instance string
	started  time.Time
	// topMu guards top and topAt, the cached top-users list.
	topMu sync.Mutex
	top   []userConnections
	topAt time.Time
	// stopAuth ends the JWKS refresh; run calls it on the way out.
	stopAuth context.CancelFunc
	// fresh are the accepted connections whose first request has not
	// reached a handler yet; a shutdown waits for them.
	fresh *freshConns
}

// newDaemon builds the daemon for cfg. Its background work (the JWKS
// refresh) ends when run returns.
func newDaemon(cfg Config, logger *slog.Logger) (*daemon, error) {
	authCtx, stopAuth := context.WithCancel(context.Background())
	auth, err := newAuthenticator(authCtx, cfg, logger)
	if err != nil {
		stopAuth()
		return nil, fmt.Errorf("authentication: %w", err)
	}
	stats := &Stats{}
	opts := *cfg.Redis
	// Failing fast lets the subscriber's own backoff decide when to retry,
	// and a caller's error is the dial's own, not its deadline's.
	opts.MaxRetries = -1
	opts.DialerRetries = 1
	opts.DialTimeout = 2 * time.Second
	// The recorder's and the catch-ups' deadlines hold even on a
	// connection that went silent.
	opts.ContextTimeoutEnabled = true
	id := newInstanceID()
	if opts.ClientName == "" {
		// CLIENT LIST tells the instances' connections apart.
		opts.ClientName = "fanout-" + id
	}
	rdb := newRedisClient(cfg, opts)
	hub := newHub(clientSettings{
		sendQueueSize:  cfg.SendQueueSize,
		sendQueueBytes: cfg.SendQueueBytes,
		pingInterval:   cfg.PingInterval,
		pongWait:       cfg.PongWait,
		writeWait:      cfg.WriteWait,
	}, logger, stats)
	hub.setLimits(cfg.MaxConnections, cfg.MaxConnectionsPerUser)
	d := &daemon{
		fresh:    newFreshConns(),
		cfg:      cfg,
		logger:   logger,
		stats:    stats,
		rdb:      rdb,
		hub:      hub,
		id:       id,
		auth:     auth,
		sampler:  newStatsSampler(stats),
		started:  time.Now(),
		stopAuth: stopAuth,
	}
	if cfg.History {
		// The recorder has connections of its own, so that live events
		// never wait for one behind a reconnect storm's history reads,
		// and in user mode the recorder lease's recording subscription.
		recOpts := opts
		recOpts.PoolSize = 4
		d.recordRdb = newRedisClient(cfg, recOpts)
	}
	d.sub = newSubscription(subscriptionParts{id: id, rdb: rdb, recordRdb: d.recordRdb, opts: opts, hub: hub, cfg: cfg, logger: logger, stats: stats})
	hub.watch = d.sub
	d.presence = newPresence(cfg, rdb, id, hub, stats, logger)
	hub.presence = d.presence
	d.receipts = newReceipts(cfg, rdb, stats, logger)
	hub.receipts = d.receipts
	if cfg.History {
		hub.catchUps = newCatchUps(rdb, cfg, stats, logger, d.sub.waitSynced)
	}
	host, _ := os.Hostname()
	d.instance = host + "/" + id
	d.metrics = newMetrics(d)
	hub.deliveryLatency = d.metrics.deliveryLatency
	d.server = newServer(hub, cfg, logger, stats, auth, func() (bool, string) { return d.ready(context.Background()) })
	d.server.users = d.sub
	return d, nil
}

// ready reports whether the daemon can deliver events to new connections:
// the Redis subscription is confirmed and tokens can be verified.
func (d *daemon) ready(ctx context.Context) (bool, string) {
	if ok, why := d.sub.ready(); !ok {
		return false, why
	}
	return d.auth.ready(ctx)
}

// logAuthMode says at start-up who may connect; the modes without
// authentication are loud about it.
func (d *daemon) logAuthMode() {
	switch d.cfg.AuthMode {
	case authLoopback:
		d.logger.Warn("PROTECTED MODE: no authentication is configured, so WebSocket connections are accepted from loopback clients only. " +
			"Set JWT_SECRET, JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL to serve browsers on other hosts (or AUTH_MODE=none to accept anyone)")
	case authNone:
		d.logger.Warn("AUTHENTICATION IS OFF (AUTH_MODE=none): anyone who can reach this port can read any user's events. " +
			"Set JWT_SECRET, JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL for production")
	case authJWT:
		source := "JWT_JWKS_URL"
		switch {
		case d.cfg.JWT.Secret != nil:
			source = "JWT_SECRET"
		case d.cfg.JWT.PublicKey != nil:
			source = "JWT_PUBLIC_KEY_FILE"
		}
		d.logger.Info("JWT authentication", "key", source, "algorithms", strings.Join(d.cfg.JWT.Methods, ","),
			"username_claim", d.cfg.JWT.UsernameClaim, "groups_claim", d.cfg.JWT.GroupsClaim, "cookie", d.cfg.JWT.Cookie)
	}
}

// redisLogOnce routes go-redis's package-level logger to slog once per process.
var redisLogOnce sync.Once

// httpIdleTimeout ends keep-alive HTTP connections (health checks, the
// console's files) left idle; upgraded WebSocket connections are not HTTP
// connections any more and have their own pings.
const httpIdleTimeout = 2 * time.Minute

// run serves on ln (and the admin routes on adminLn, unless nil) until ctx
// ends, then shuts down gracefully within ShutdownTimeout: it stops
// accepting, stops the subscriber and sends every client a going-away close
// frame. It owns every goroutine it starts.
func (d *daemon) run(ctx context.Context, ln, adminLn net.Listener) error {
	defer d.stopAuth()
	redisLogOnce.Do(func() {
		redis.SetLogger(redisLogger{logger: d.logger, limiter: newLogLimiter(1, 5)})
	})
	d.logger.Info("Starting fanout", append([]any{"version", version, "addr", ln.Addr().String(), "redis", redisTarget(d.cfg)}, d.sub.startAttrs()...)...)
	logDeploymentNotes(d.logger, d.cfg)
	d.logAuthMode()

	subCtx, stopSub := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { d.sub.run(subCtx) })
	wg.Go(func() { redisx.KeepSlotsFresh(subCtx, clusterStateEvery, d.rdb, d.recordRdb) })
	wg.Go(func() { d.sampler.run(subCtx) })
	wg.Go(func() { d.hub.runPinger(subCtx) })
	// Ended with the subscription, after the hub's connections are closed:
	// its last write takes this instance's users out of presence.
	wg.Go(func() { d.presence.run(subCtx) })
	wg.Go(func() { d.receipts.run(subCtx) })
	wg.Go(func() { warnUnneededPassword(subCtx, d.cfg, d.logger) })

	fresh := d.fresh
	httpServer := &http.Server{
		Handler:           fresh.handler(d.server.routes()),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       httpIdleTimeout,
		ErrorLog:          slog.NewLogLogger(d.logger.Handler(), slog.LevelWarn),
		ConnState:         fresh.connState,
		ConnContext:       fresh.connContext,
	}
	ln = &onceCloseListener{Listener: ln}
	serveErr := make(chan error, 2)
	wg.Go(func() { serveErr <- fmt.Errorf("serve %s: %w", ln.Addr(), httpServer.Serve(ln)) })
	var adminServer *http.Server
	if adminLn != nil {
		adminServer = &http.Server{
			Handler:           d.adminRoutes(),
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(d.logger.Handler(), slog.LevelWarn),
		}
		d.logger.Info("Admin listener", "addr", adminLn.Addr().String(), "token_required", d.cfg.AdminToken != "", "pprof", d.cfg.Pprof)
		wg.Go(func() {
			if err := adminServer.Serve(adminLn); !errors.Is(err, http.ErrServerClosed) {
				serveErr <- fmt.Errorf("serve admin %s: %w", adminLn.Addr(), err)
			}
		})
	}

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
	}

	d.logger.Info("Shutting down", "connections", d.hub.connections.Load(), "timeout", d.cfg.ShutdownTimeout)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), d.cfg.ShutdownTimeout)
	defer cancel()
	// The 1001s go out once the listener is closed, not after Shutdown
	// has waited for HTTP connections (up to 5 s for one that sent nothing).
	hubDone := make(chan error, 1)
	httpServer.RegisterOnShutdown(func() { hubDone <- d.hub.shutdown(shutdownCtx) })
	// Accept no more, and let the connections accepted just before send
	// their first request: Shutdown would drop it unanswered (freshConns).
	_ = ln.Close()
	fresh.wait(shutdownCtx, freshWait)
	if serr := httpServer.Shutdown(shutdownCtx); serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		d.logger.Warn("HTTP shutdown incomplete", "err", serr)
	}
	if adminServer != nil {
		// A pprof profile in progress is cut short rather than waited for.
		_ = adminServer.Close()
	}
	if herr := <-hubDone; herr != nil {
		d.logger.Warn("Some clients did not close in time; dropped them", "err", herr)
	}
	// Only now: a recording cut short by the subscriber's end is
	// delivered without an id, which a client still connected would
	// receive, and get again from the history when it resumes.
	stopSub()
	wg.Wait()
	_ = d.rdb.Close()
	if d.recordRdb != nil {
		_ = d.recordRdb.Close()
	}
	d.logger.Info("Stopped", d.stats.logValues()...)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
