package redisx

import (
	"testing"

	"github.com/redis/go-redis/v9"
)

func TestNewClientPicksTheDeploymentsClient(t *testing.T) {
	opts := redis.Options{Addr: "10.0.0.9:6379"}
	cases := []struct {
		name   string
		d      Deployment
		client string
		target string
	}{
		{"one Redis", Deployment{}, "*redis.Client", "10.0.0.9:6379"},
		{"sentinel", Deployment{SentinelAddrs: []string{"10.0.0.1:26379", "10.0.0.2:26379"}, SentinelMaster: "events", SentinelPassword: "s3cret"},
			"*redis.Client", "sentinel events@10.0.0.1:26379,10.0.0.2:26379"},
		{"cluster", Deployment{ClusterAddrs: []string{"[::1]:7000", "redis-0.redis:6379"}}, "*redis.ClusterClient", "cluster [::1]:7000,redis-0.redis:6379"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rdb := NewClient(c.d, opts)
			t.Cleanup(func() { rdb.Close() })
			var got string
			switch rdb.(type) {
			case *redis.Client:
				got = "*redis.Client"
			case *redis.ClusterClient:
				got = "*redis.ClusterClient"
			}
			if got != c.client {
				t.Errorf("client %T, want %s", rdb, c.client)
			}
			if target := Target(c.d, opts.Addr); target != c.target || target == "" {
				t.Errorf("target %q, want %q", target, c.target)
			}
		})
	}
}

func TestTargetNeverNamesAPassword(t *testing.T) {
	d := Deployment{SentinelAddrs: []string{"a:1"}, SentinelMaster: "m", SentinelPassword: "s3cret"}
	if got := Target(d, ""); got != "sentinel m@a:1" {
		t.Fatalf("target %q", got)
	}
}
