package main

// TEMPORARY: replaced by the lead's redisclient.go (and config.go's
// redisDeployment) at the merge of issue 13; delete this file then. It
// lets the publish13 branch build and test `fanout publish` against the
// contract (notes/contract13.md) before they exist.

import "github.com/redis/go-redis/v9"

// newRedisClient is the contract's client constructor; this stand-in
// knows a single Redis only.
func newRedisClient(cfg Config, opts redis.Options) redis.UniversalClient {
	return redis.NewClient(&opts)
}

// redisDeployment is the lead's reader of REDIS_SENTINEL_* and
// REDIS_CLUSTER_ADDRS into cfg; this stand-in reads nothing.
func (r *envReader) redisDeployment(cfg *Config) {}
