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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
	"fanout/internal/redisx"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "publish" {
		os.Exit(runPublish(context.Background(), os.Args[2:], os.Getenv, os.Stdin, os.Stdout, os.Stderr))
	}
	cfg, err := loadConfig(os.Getenv)
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

	// No TCP keep-alive on accepted connections: WebSocket pings
	// (PING_INTERVAL) find dead peers, the HTTP server's IdleTimeout ends
	// idle HTTP connections, and the four setsockopt calls per accept were
	// 5 % of the daemon's CPU while connections poured in.
	ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", cfg.ListenAddr)
	if err != nil {
		logger.Error("Cannot listen", "addr", cfg.ListenAddr, "err", err)
		os.Exit(1)
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
	sub       *Subscriber
	auth      *Authenticator
	server    *Server
	metrics   *metrics
	sampler   *statsSampler
	// instance names this process in /admin/stats: host and a random id.
	instance string
	started  time.Time
	// topMu guards top and topAt, the cached top-users list.
	topMu sync.Mutex
	top   []userConnections
	topAt time.Time
	// stopAuth ends the JWKS refresh; run calls it on the way out.
	stopAuth context.CancelFunc
	// lease, in SUBSCRIBE_MODE=user with HISTORY on, makes one instance
	// record every user's events (nil otherwise); leaseStats are the
	// counters of its recording subscription.
	lease      *recorderLease
	leaseStats *Stats
	// shards, with PUBSUB_SHARDED on a Redis Cluster, runs a subscription
	// per master in place of sub's (nil otherwise).
	shards *shardRouter
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
	// Failing fast lets the subscriber's own backoff decide when to retry.
	opts.MaxRetries = -1
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
		cfg:      cfg,
		logger:   logger,
		stats:    stats,
		rdb:      rdb,
		hub:      hub,
		sub:      newSubscriber(id, rdb, hub, cfg, logger, stats),
		auth:     auth,
		sampler:  newStatsSampler(stats),
		started:  time.Now(),
		stopAuth: stopAuth,
	}
	if cfg.History {
		hub.catchUps = newCatchUps(rdb, cfg, stats, logger)
		// The recorder has connections of its own, so that live events
		// never wait for one behind a reconnect storm's history reads.
		recOpts := opts
		recOpts.PoolSize = 2
		if cfg.SubscribeMode == subscribeUser {
			// And the recorder lease's recording subscription.
			recOpts.PoolSize = 4
		}
		d.recordRdb = newRedisClient(cfg, recOpts)
		d.sub.recorder = newRecorder(d.recordRdb, history.Layout{Sharded: cfg.PubSubSharded}, cfg.Retention, d.sub.broadcast, stats, logger)
	}
	cluster, onCluster := rdb.(*redis.ClusterClient)
	switch {
	case cfg.PubSubSharded && onCluster:
		d.shards = newShardRouter(cluster, cfg, opts, logger, d.shardSubscriber(opts))
		d.shards.recorder = d.sub.recorder
		hub.watch = d.shards
	case cfg.PubSubSharded:
		// One Redis (or a Sentinel-watched one) holds every shard channel.
		users := newUserChannels(cfg.SubscribeGrace, cfg.ProbeTimeout, false)
		users.sharded = true
		d.sub.users = users
		hub.watch = users
	case cfg.SubscribeMode == subscribeUser:
		users := newUserChannels(cfg.SubscribeGrace, cfg.ProbeTimeout, cfg.History)
		d.sub.users = users
		hub.watch = users
		if cfg.History {
			d.leaseStats = &Stats{}
			recLogger := logger.With("role", "recorder")
			rec := newSubscriber(newInstanceID(), rdb, nil, cfg, recLogger, d.leaseStats)
			rec.recorder = newRecorder(d.recordRdb, history.Layout{Sharded: cfg.PubSubSharded}, cfg.Retention, func(string, *message) {}, d.leaseStats, recLogger)
			rec.answersSyncs = true
			// A resuming connection's catch-up reads the history once the
			// lease holder has recorded every event published before its
			// channel was subscribed here.
			hub.catchUps.sync = users.waitSynced
			d.lease = &recorderLease{rdb: rdb, owner: d.sub.instanceID, rec: rec, logger: logger}
			rec.onConfirmed = d.lease.markReady
			// A user's first events after this instance subscribes are
			// found in the history the lease holder writes, not appended
			// ahead of the ones it has still to record.
			d.sub.recorder.waitFirst = d.lease.recording
		}
	}
	host, _ := os.Hostname()
	d.instance = host + "/" + d.sub.instanceID
	d.metrics = newMetrics(d)
	hub.deliveryLatency = d.metrics.deliveryLatency
	d.server = newServer(hub, cfg, logger, stats, auth, func() (bool, string) { return d.ready(context.Background()) })
	switch {
	case d.shards != nil:
		d.server.users = d.shards
	case d.sub.users != nil:
		d.server.users = d.sub.users
	}
	return d, nil
}

// shardSubscriber returns the builder of a cluster master's subscription
// for the shardRouter: a client of that node alone, and a Subscriber
// reading it with SSUBSCRIBE, whose events go to the shared recorder.
func (d *daemon) shardSubscriber(opts redis.Options) func(addr string, users *userChannels) (*Subscriber, *redis.Client) {
	var n atomic.Int64
	return func(addr string, users *userChannels) (*Subscriber, *redis.Client) {
		nodeOpts := opts
		nodeOpts.Addr, nodeOpts.DB = addr, 0
		client := redis.NewClient(&nodeOpts)
		sub := newSubscriber(d.sub.instanceID+"-"+strconv.FormatInt(n.Add(1), 10), d.rdb, d.hub, d.cfg, d.logger.With("node", addr), d.stats)
		sub.node, sub.addr, sub.shard = client, addr, true
		sub.users, sub.recorder = users, d.sub.recorder
		return sub, client
	}
}

// ready reports whether the daemon can deliver events to new connections:
// the Redis subscription is confirmed and tokens can be verified.
func (d *daemon) ready(ctx context.Context) (bool, string) {
	if ok, why := d.subReady(); !ok {
		return false, why
	}
	return d.auth.ready(ctx)
}

// subReady reports whether the Redis subscription is live, or why not:
// with a shardRouter, every master's.
func (d *daemon) subReady() (bool, string) {
	if d.shards != nil {
		return d.shards.ready()
	}
	return d.sub.ready()
}

// subConfirmed reports whether Redis confirmed the subscription (every
// master's, with a shardRouter).
func (d *daemon) subConfirmed() bool {
	if d.shards != nil {
		return d.shards.confirmed()
	}
	return d.sub.confirmed.Load()
}

// subLastReceived is when the subscription last read anything (UnixNano).
func (d *daemon) subLastReceived() int64 {
	if d.shards != nil {
		return d.shards.lastReceived()
	}
	return d.sub.lastReceived.Load()
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
	switch {
	case d.cfg.PubSubSharded:
		d.logger.Info("Starting fanout", "version", version, "addr", ln.Addr().String(),
			"redis", redisTarget(d.cfg), "subscribe_mode", subscribeUser, "sharded", true, "channels", channelPrefix+"{username}")
		d.logger.Warn("PUBSUB_SHARDED: publishers must SPUBLISH to workflow:events:{username}; a plain PUBLISH reaches no connection. " +
			"Events reach the history only through the project's publish path (fanout publish, the Go package, the Lua recipe) " +
			"or while an instance has the user's channel subscribed")
	case d.cfg.SubscribeMode == subscribeUser:
		d.logger.Info("Starting fanout", "version", version, "addr", ln.Addr().String(),
			"redis", redisTarget(d.cfg), "subscribe_mode", subscribeUser, "channels", channelPrefix+"{username}")
	default:
		d.logger.Info("Starting fanout", "version", version, "addr", ln.Addr().String(),
			"redis", redisTarget(d.cfg), "pattern", channelPattern)
	}
	if d.cfg.ClusterAddrs != nil && !d.cfg.PubSubSharded {
		d.logger.Info("Redis Cluster with classic pub/sub: every node forwards every published event to every other node; PUBSUB_SHARDED=true (with SUBSCRIBE_MODE=user) keeps each event on its channel's node")
	}
	d.logAuthMode()

	subCtx, stopSub := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	if d.shards != nil {
		wg.Go(func() { d.shards.run(subCtx) })
	} else {
		wg.Go(func() { d.sub.run(subCtx) })
	}
	if d.lease != nil {
		wg.Go(func() { d.lease.run(subCtx) })
	}
	wg.Go(func() { redisx.KeepSlotsFresh(subCtx, clusterStateEvery, d.rdb, d.recordRdb) })
	wg.Go(func() { d.sampler.run(subCtx) })
	wg.Go(func() { d.hub.runPinger(subCtx) })

	httpServer := &http.Server{
		Handler:           d.server.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       httpIdleTimeout,
		ErrorLog:          slog.NewLogLogger(d.logger.Handler(), slog.LevelWarn),
	}
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
