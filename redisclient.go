package main

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/internal/redisx"
)

// deployment is cfg's Redis deployment, for redisx.
func deployment(cfg Config) redisx.Deployment {
	return redisx.Deployment{
		SentinelAddrs:    cfg.SentinelAddrs,
		SentinelMaster:   cfg.SentinelMaster,
		SentinelPassword: cfg.SentinelPassword,
		ClusterAddrs:     cfg.ClusterAddrs,
	}
}

// newRedisClient returns the client of the configured deployment
// (redisx.NewClient); opts carries what every data node shares.
func newRedisClient(cfg Config, opts redis.Options) redis.UniversalClient {
	return redisx.NewClient(deployment(cfg), opts)
}

// redisTarget names the configured Redis for the logs (never a password).
func redisTarget(cfg Config) string { return redisx.Target(deployment(cfg), cfg.Redis.Addr) }

// checkSeeds asks, at start-up, whether the Sentinel or Cluster seeds
// answer (redisx.CheckSeeds): with none answering as expected, the
// configuration is wrong (or the whole deployment is down) and the daemon
// stops with a configError naming the variable. A single Redis is not
// checked: it may come up later, and the subscriber retries it. Once
// started, every deployment is retried alike.
func checkSeeds(ctx context.Context, cfg Config) error {
	err := redisx.CheckSeeds(ctx, deployment(cfg), *cfg.Redis)
	if seedErr, ok := errors.AsType[*redisx.SeedError](err); ok {
		return &configError{name: seedErr.Variable, value: seedErr.Addrs, why: seedErr.Why}
	}
	return err
}

// clusterStateEvery is how often the cluster clients read the slot map
// again (redisx.KeepSlotsFresh).
const clusterStateEvery = time.Second

// logDeploymentNotes says at start-up what the configured Redis deployment
// asks of publishers and costs: with sharded pub/sub a plain PUBLISH
// reaches no connection; on a cluster, classic pub/sub sends every event
// to every node.
func logDeploymentNotes(logger *slog.Logger, cfg Config) {
	if cfg.PubSubSharded {
		logger.Warn("PUBSUB_SHARDED: publishers must SPUBLISH to workflow:events:{username}; a plain PUBLISH reaches no connection. " +
			"Events reach the history only through the project's publish path (fanout publish, the Go package, the Lua recipe) " +
			"or while an instance has the user's channel subscribed")
	}
	if cfg.ClusterAddrs != nil && !cfg.PubSubSharded {
		logger.Info("Redis Cluster with classic pub/sub: every node forwards every published event to every other node; PUBSUB_SHARDED=true (with SUBSCRIBE_MODE=user) keeps each event on its channel's node")
	}
}

// warnUnneededPassword says once, as soon as Redis answers, when a Redis
// password is configured for the default user but Redis accepts
// connections without one: Redis then takes any password, and a password
// meant for another Redis, or a requirepass that was forgotten, goes
// unnoticed. It retries while Redis is down, and returns when ctx ends.
// A password of another ACL user (REDIS_USERNAME) is not checked: only a
// wrong AUTH could tell, and Redis records that as a failed login.
func warnUnneededPassword(ctx context.Context, cfg Config, logger *slog.Logger) {
	if cfg.Redis.Password == "" || (cfg.Redis.Username != "" && cfg.Redis.Username != "default") {
		return
	}
	backoff := redisx.Backoff{Min: retryMin, Max: cfg.RedisRetryMax}
	for {
		tctx, cancel := context.WithTimeout(ctx, cfg.ProbeTimeout)
		open, err := redisx.AcceptsWithoutPassword(tctx, deployment(cfg), *cfg.Redis)
		cancel()
		if err == nil {
			if open {
				logger.Warn("A Redis password is set (REDIS_PASSWORD or REDIS_URL) but Redis requires none: it accepts any password, so this one is never checked. "+
					"Set requirepass (or an ACL user) on Redis, or unset the password", "redis", redisTarget(cfg))
			}
			return
		}
		if !redisx.Sleep(ctx, backoff.Next()) {
			return
		}
	}
}
