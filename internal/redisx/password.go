package redisx

import (
	"context"
	"errors"

	"github.com/redis/go-redis/v9"
)

// AcceptsWithoutPassword reports whether the Redis of d answers PING on a
// connection that gives none of opts's credentials. For the default user
// (opts.Username "" or "default") that means a password in opts is never
// checked: Redis accepts any password for a user without one, so a
// password set by mistake goes unnoticed. Any error reply (NOAUTH,
// WRONGPASS) is false; err is set only when Redis could not be asked.
func AcceptsWithoutPassword(ctx context.Context, d Deployment, opts redis.Options) (bool, error) {
	o := opts
	o.Username, o.Password = "", ""
	o.CredentialsProvider, o.CredentialsProviderContext, o.StreamingCredentialsProvider = nil, nil, nil
	// A pool of 2 for its one connection: go-redis starts a goroutine
	// that probes the address for a second after it failed PoolSize
	// dials, which one failed dial would start.
	o.MaxRetries, o.DialerRetries, o.PoolSize = -1, 1, 2
	c := NewClient(d, o)
	defer c.Close()
	err := c.Ping(ctx).Err()
	if err == nil {
		return true, nil
	}
	if _, reply := errors.AsType[redis.Error](err); reply {
		return false, nil
	}
	return false, err
}
