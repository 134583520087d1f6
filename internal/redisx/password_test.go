package redisx

import (
	"testing"

	"github.com/redis/go-redis/v9"

	"fanout/internal/testproc"
)

func TestAcceptsWithoutPasswordAsksWithoutCredentials(t *testing.T) {
	t.Parallel()
	open := testproc.StartRedis(t).Addr()
	if ok, err := AcceptsWithoutPassword(t.Context(), Deployment{}, redis.Options{Addr: open, Password: "unchecked"}); err != nil || !ok {
		t.Fatalf("a Redis without requirepass: %v, %v; want true", ok, err)
	}
	// A Redis that is down is no answer: the caller asks again later.
	if ok, err := AcceptsWithoutPassword(t.Context(), Deployment{}, redis.Options{Addr: closedAddr(t), Password: "pw"}); err == nil || ok {
		t.Fatalf("a Redis that is down: %v, %v; want an error", ok, err)
	}
}
