package redisx

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// SeedCheckTimeout bounds CheckSeeds.
const SeedCheckTimeout = 3 * time.Second

// SeedError says that no seed of a deployment answers as expected.
type SeedError struct {
	// Variable names the setting holding the seeds: REDIS_SENTINEL_ADDRS
	// or REDIS_CLUSTER_ADDRS.
	Variable string
	// Addrs are the seeds, comma-separated.
	Addrs string
	// Why says what each seed answered, in one line.
	Why string
}

func (e *SeedError) Error() string { return fmt.Sprintf("%s=%q: %s", e.Variable, e.Addrs, e.Why) }

// CheckSeeds asks whether the Sentinel or Cluster seeds of d answer, and
// returns a *SeedError when none does as expected: none reachable, seeds
// that are no sentinel of the master, or no cluster node. One that does
// is enough. A single Redis is only checked when opts ask for TLS through
// a TLSDialer: one that is up and does not speak TLS is a *TLSError; one
// that is down is nil, it may come up later. opts are the data nodes'
// options (credentials, TLS).
func CheckSeeds(ctx context.Context, d Deployment, opts redis.Options) error {
	var name string
	var addrs []string
	var check func(ctx context.Context, addr string) error
	switch {
	case d.SentinelAddrs != nil:
		name, addrs = "REDIS_SENTINEL_ADDRS", d.SentinelAddrs
		check = func(ctx context.Context, addr string) error {
			s := redis.NewSentinelClient(&redis.Options{Addr: addr, Password: d.SentinelPassword,
				TLSConfig: opts.TLSConfig, Dialer: opts.Dialer, DialTimeout: SeedCheckTimeout, MaxRetries: -1, DialerRetries: 1})
			defer s.Close()
			if _, err := s.GetMasterAddrByName(ctx, d.SentinelMaster).Result(); err != nil {
				if errors.Is(err, redis.Nil) {
					return fmt.Errorf("%s watches no master named %q (REDIS_SENTINEL_MASTER)", addr, d.SentinelMaster)
				}
				return fmt.Errorf("%s: %w", addr, err)
			}
			return nil
		}
	case d.ClusterAddrs != nil:
		name, addrs = "REDIS_CLUSTER_ADDRS", d.ClusterAddrs
		check = func(ctx context.Context, addr string) error {
			o := opts
			o.Addr, o.DB, o.DialTimeout, o.MaxRetries, o.DialerRetries = addr, 0, SeedCheckTimeout, -1, 1
			c := redis.NewClient(&o)
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
		if opts.TLSConfig == nil || opts.Dialer == nil {
			return nil
		}
		return CheckTLS(ctx, opts.Addr, opts.Dialer)
	}
	ctx, cancel := context.WithTimeout(ctx, SeedCheckTimeout)
	defer cancel()
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
	return &SeedError{Variable: name, Addrs: strings.Join(addrs, ","), Why: "no address answers as expected: " + strings.Join(why, "; ")}
}
