package main

import (
	"errors"
	"slices"
	"testing"

	"github.com/redis/go-redis/v9"
)

func TestConfigReadsSentinelAndClusterVariables(t *testing.T) {
	cfg, err := loadConfig(envOf(map[string]string{
		"REDIS_SENTINEL_ADDRS":    " 10.0.0.1:26379, 10.0.0.2:26379 ,",
		"REDIS_SENTINEL_MASTER":   "events",
		"REDIS_SENTINEL_PASSWORD": "s3cret",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.SentinelAddrs, []string{"10.0.0.1:26379", "10.0.0.2:26379"}) || cfg.SentinelMaster != "events" || cfg.SentinelPassword != "s3cret" {
		t.Fatalf("sentinel: %q %q %q", cfg.SentinelAddrs, cfg.SentinelMaster, cfg.SentinelPassword)
	}
	if _, ok := newRedisClient(cfg, *cfg.Redis).(*redis.Client); !ok || redisTarget(cfg) != "sentinel events@10.0.0.1:26379,10.0.0.2:26379" {
		t.Fatalf("sentinel client: %T, target %q", newRedisClient(cfg, *cfg.Redis), redisTarget(cfg))
	}

	cfg, err = loadConfig(envOf(map[string]string{
		"REDIS_CLUSTER_ADDRS": "[::1]:7000,redis-0.redis:6379",
		"SUBSCRIBE_MODE":      "user",
		"PUBSUB_SHARDED":      "true",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.ClusterAddrs, []string{"[::1]:7000", "redis-0.redis:6379"}) || !cfg.PubSubSharded {
		t.Fatalf("cluster: %q sharded=%v", cfg.ClusterAddrs, cfg.PubSubSharded)
	}
	if _, ok := newRedisClient(cfg, *cfg.Redis).(*redis.ClusterClient); !ok {
		t.Fatalf("cluster client: %T", newRedisClient(cfg, *cfg.Redis))
	}

	// Sharded pub/sub on one Redis 7 is allowed: every channel is there.
	if cfg, err = loadConfig(envOf(map[string]string{"SUBSCRIBE_MODE": "user", "PUBSUB_SHARDED": "true"})); err != nil || !cfg.PubSubSharded {
		t.Fatalf("sharded on one Redis: %v, %v", cfg.PubSubSharded, err)
	}
}

func TestConfigBadRedisDeploymentNamesTheVariable(t *testing.T) {
	cases := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"REDIS_SENTINEL_ADDRS": "a:1", "REDIS_SENTINEL_MASTER": "m", "REDIS_CLUSTER_ADDRS": "b:2"}, "REDIS_CLUSTER_ADDRS"},
		{map[string]string{"REDIS_SENTINEL_ADDRS": "a:1"}, "REDIS_SENTINEL_MASTER"},
		{map[string]string{"REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINEL_ADDRS"},
		{map[string]string{"REDIS_CLUSTER_ADDRS": " , "}, "REDIS_CLUSTER_ADDRS"},
		{map[string]string{"REDIS_CLUSTER_ADDRS": "redis-0"}, "REDIS_CLUSTER_ADDRS"},
		{map[string]string{"REDIS_CLUSTER_ADDRS": "a:1", "REDIS_DB": "3"}, "REDIS_DB"},
		{map[string]string{"REDIS_SENTINEL_ADDRS": "a:99999", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINEL_ADDRS"},
		{map[string]string{"PUBSUB_SHARDED": "true"}, "PUBSUB_SHARDED"},
		{map[string]string{"PUBSUB_SHARDED": "sometimes", "SUBSCRIBE_MODE": "user"}, "PUBSUB_SHARDED"},
	}
	for _, tc := range cases {
		_, err := loadConfig(envOf(tc.env))
		var cerr *configError
		if !errors.As(err, &cerr) || cerr.name != tc.want {
			t.Errorf("%v: %v, want an error naming %s", tc.env, err, tc.want)
		}
	}
}
