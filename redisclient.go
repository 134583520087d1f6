package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// newRedisClient returns the client for the configured deployment: a
// single Redis (opts.Addr), a master found through Sentinel, or a Redis
// Cluster. opts carries the settings every data node shares: credentials,
// TLS, timeouts, pool size, client name.
func newRedisClient(cfg Config, opts redis.Options) redis.UniversalClient {
	if cfg.SentinelAddrs == nil && cfg.ClusterAddrs == nil {
		return redis.NewClient(&opts)
	}
	u := redis.UniversalOptions{
		Addrs:                 cfg.ClusterAddrs,
		MasterName:            cfg.SentinelMaster,
		SentinelPassword:      cfg.SentinelPassword,
		ClientName:            opts.ClientName,
		Protocol:              opts.Protocol,
		Username:              opts.Username,
		Password:              opts.Password,
		DB:                    opts.DB,
		MaxRetries:            opts.MaxRetries,
		DialTimeout:           opts.DialTimeout,
		ReadTimeout:           opts.ReadTimeout,
		WriteTimeout:          opts.WriteTimeout,
		ContextTimeoutEnabled: opts.ContextTimeoutEnabled,
		PoolSize:              opts.PoolSize,
		TLSConfig:             opts.TLSConfig,
	}
	if cfg.SentinelAddrs != nil {
		u.Addrs = cfg.SentinelAddrs
		return redis.NewFailoverClient(u.Failover())
	}
	return redis.NewClusterClient(u.Cluster())
}

// redisTarget names the configured Redis for the logs (never a password).
func redisTarget(cfg Config) string {
	switch {
	case cfg.SentinelAddrs != nil:
		return "sentinel " + cfg.SentinelMaster + "@" + strings.Join(cfg.SentinelAddrs, ",")
	case cfg.ClusterAddrs != nil:
		return "cluster " + strings.Join(cfg.ClusterAddrs, ",")
	default:
		return cfg.Redis.Addr
	}
}

// seedCheckTimeout bounds start-up's check of the Sentinel or Cluster
// seeds.
const seedCheckTimeout = 3 * time.Second

// checkSeeds asks, at start-up, whether the Sentinel or Cluster seeds
// answer: with none answering, or with seeds that are no sentinel of the
// master or no cluster node, the configuration is wrong (or the whole
// deployment is down) and the daemon stops with a configError naming the
// variable. A single Redis is not checked: it may come up later, and the
// subscriber retries it. Once started, every deployment is retried alike.
func checkSeeds(ctx context.Context, cfg Config) error {
	var name string
	var check func(ctx context.Context, addr string) error
	switch {
	case cfg.SentinelAddrs != nil:
		name = "REDIS_SENTINEL_ADDRS"
		check = func(ctx context.Context, addr string) error {
			s := redis.NewSentinelClient(&redis.Options{Addr: addr, Password: cfg.SentinelPassword,
				TLSConfig: cfg.Redis.TLSConfig, DialTimeout: seedCheckTimeout, MaxRetries: -1})
			defer s.Close()
			if _, err := s.GetMasterAddrByName(ctx, cfg.SentinelMaster).Result(); err != nil {
				if errors.Is(err, redis.Nil) {
					return fmt.Errorf("%s watches no master named %q (REDIS_SENTINEL_MASTER)", addr, cfg.SentinelMaster)
				}
				return fmt.Errorf("%s: %w", addr, err)
			}
			return nil
		}
	case cfg.ClusterAddrs != nil:
		name = "REDIS_CLUSTER_ADDRS"
		check = func(ctx context.Context, addr string) error {
			opts := *cfg.Redis
			opts.Addr, opts.DB, opts.DialTimeout, opts.MaxRetries = addr, 0, seedCheckTimeout, -1
			c := redis.NewClient(&opts)
			defer c.Close()
			err := c.ClusterInfo(ctx).Err()
			switch {
			case err != nil && strings.Contains(err.Error(), "cluster support disabled"):
				return fmt.Errorf("%s is a Redis without cluster mode (cluster-enabled no): use REDIS_HOST/REDIS_URL for it", addr)
			case err != nil:
				return fmt.Errorf("%s: %w", addr, err)
			}
			return nil
		}
	default:
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, seedCheckTimeout)
	defer cancel()
	addrs := cfg.SentinelAddrs
	if addrs == nil {
		addrs = cfg.ClusterAddrs
	}
	errs := make([]error, len(addrs))
	var wg sync.WaitGroup
	for i, addr := range addrs {
		wg.Go(func() { errs[i] = check(ctx, addr) })
	}
	wg.Wait()
	var why []string
	for _, err := range errs {
		if err == nil {
			return nil
		}
		why = append(why, err.Error())
	}
	return &configError{name: name, value: strings.Join(addrs, ","), why: "no address answers as expected: " + strings.Join(why, "; ")}
}

// clusterStateEvery is how often the cluster clients read the slot map
// again. go-redis alone keeps sending a dead master's slots to it long
// after its replica took over.
const clusterStateEvery = time.Second

// keepClusterStateFresh reloads the slot map of every cluster client
// among clients every clusterStateEvery until ctx ends; it does nothing
// for other clients.
func keepClusterStateFresh(ctx context.Context, clients ...redis.UniversalClient) {
	var clusters []*redis.ClusterClient
	for _, c := range clients {
		if cc, ok := c.(*redis.ClusterClient); ok {
			clusters = append(clusters, cc)
		}
	}
	if len(clusters) == 0 {
		return
	}
	tick := time.NewTicker(clusterStateEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, cc := range clusters {
			// In the background; a failed read leaves the last map.
			cc.ReloadState(ctx)
		}
	}
}
