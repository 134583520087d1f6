package redisx

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"fanout/internal/testproc"
)

func TestCheckSeedsDoesNotCheckOneRedis(t *testing.T) {
	t.Parallel()
	if err := CheckSeeds(t.Context(), Deployment{}, redis.Options{Addr: closedAddr(t)}); err != nil {
		t.Fatalf("one Redis checked: %v", err)
	}
}

func TestCheckSeedsNamesTheVariableAndWhatEachSeedAnswered(t *testing.T) {
	t.Parallel()
	plain := testproc.StartRedis(t).Addr()
	dead := closedAddr(t)
	cases := []struct {
		name    string
		d       Deployment
		wantVar string
		wantWhy []string
	}{
		{"cluster seeds that are a plain Redis and nothing", Deployment{ClusterAddrs: []string{plain, dead}}, "REDIS_CLUSTER_ADDRS",
			[]string{plain + " is a Redis without cluster mode (cluster-enabled no): use REDIS_HOST/REDIS_URL for it", dead + ": "}},
		{"sentinel seeds that are a plain Redis", Deployment{SentinelAddrs: []string{plain}, SentinelMaster: "events"}, "REDIS_SENTINEL_ADDRS",
			[]string{plain + ": "}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := CheckSeeds(context.Background(), c.d, redis.Options{})
			var seedErr *SeedError
			if !errors.As(err, &seedErr) {
				t.Fatalf("err %v, want a *SeedError", err)
			}
			addrs := strings.Join(append(c.d.SentinelAddrs, c.d.ClusterAddrs...), ",")
			if seedErr.Variable != c.wantVar || seedErr.Addrs != addrs || !strings.HasPrefix(seedErr.Why, "no address answers as expected: ") {
				t.Fatalf("got %+v", seedErr)
			}
			for _, want := range c.wantWhy {
				if !strings.Contains(seedErr.Why, want) {
					t.Errorf("why %q lacks %q", seedErr.Why, want)
				}
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("not one line: %q", err)
			}
		})
	}
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
