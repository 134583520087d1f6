package redisx

import (
	"strings"

	"github.com/redis/go-redis/v9"
)

// Deployment names the Redis a client talks to: a master found through
// Sentinel when SentinelAddrs is set, a Redis Cluster when ClusterAddrs is
// set, else the one Redis of the client options' Addr.
type Deployment struct {
	// SentinelAddrs are the sentinels' addresses (REDIS_SENTINEL_ADDRS).
	SentinelAddrs []string
	// SentinelMaster is the master's name the sentinels watch.
	SentinelMaster string
	// SentinelPassword authenticates to the sentinels, not the master.
	SentinelPassword string
	// ClusterAddrs are seed nodes of a Redis Cluster (REDIS_CLUSTER_ADDRS).
	ClusterAddrs []string
}

// NewClient returns the client of d: a *redis.Client for one Redis
// (opts.Addr) or a master found through Sentinel, a *redis.ClusterClient
// for a Cluster. opts carries the settings every data node shares:
// credentials, TLS, timeouts, pool size, client name.
func NewClient(d Deployment, opts redis.Options) redis.UniversalClient {
	if d.SentinelAddrs == nil && d.ClusterAddrs == nil {
		return redis.NewClient(&opts)
	}
	u := redis.UniversalOptions{
		Addrs:                 d.ClusterAddrs,
		MasterName:            d.SentinelMaster,
		SentinelPassword:      d.SentinelPassword,
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
		Dialer:                opts.Dialer,
		DialerRetries:         opts.DialerRetries,
		PoolSize:              opts.PoolSize,
		TLSConfig:             opts.TLSConfig,
	}
	if d.SentinelAddrs != nil {
		u.Addrs = d.SentinelAddrs
		return redis.NewFailoverClient(u.Failover())
	}
	return redis.NewClusterClient(u.Cluster())
}

// Target names d for the logs, never with a password; addr is the one
// Redis's address, used when d is neither Sentinel nor Cluster.
func Target(d Deployment, addr string) string {
	switch {
	case d.SentinelAddrs != nil:
		return "sentinel " + d.SentinelMaster + "@" + strings.Join(d.SentinelAddrs, ",")
	case d.ClusterAddrs != nil:
		return "cluster " + strings.Join(d.ClusterAddrs, ",")
	default:
		return addr
	}
}
