package redisx

import (
	"errors"
	"testing"

	"github.com/redis/go-redis/v9"
)

func TestMovedSlotReadsOnlyMovedReplies(t *testing.T) {
	err := redisErr("MOVED 3999 127.0.0.1:6381")
	slot, ok := MovedSlot(err)
	if !ok || slot != 3999 || MovedAddr(err) != "127.0.0.1:6381" {
		t.Fatalf("MOVED: %d %v %q", slot, ok, MovedAddr(err))
	}
	for _, err := range []error{redisErr("ASK 3999 127.0.0.1:6381"), redisErr("MOVED x y"), redisErr("MOVED 16384 a:1"),
		redisErr("MOVED -1 a:1"), redisErr("MOVED"), errors.New("MOVED 1 a"), nil} {
		if _, ok := MovedSlot(err); ok {
			t.Errorf("%v read as MOVED", err)
		}
	}
	if addr := MovedAddr(redisErr("ASK 1 a:1")); addr != "" {
		t.Errorf("MovedAddr of an ASK: %q", addr)
	}
}

func FuzzMovedSlot(f *testing.F) {
	f.Add("MOVED 3999 127.0.0.1:6381")
	f.Add("MOVED 99999999999999999999 a")
	f.Fuzz(func(t *testing.T, reply string) {
		if slot, ok := MovedSlot(redisErr(reply)); ok && (slot < 0 || slot >= ClusterSlots) {
			t.Fatalf("%q: slot %d", reply, slot)
		}
	})
}

// redisErr is an error reply, as go-redis's reader returns one.
type redisErr string

func (e redisErr) Error() string { return string(e) }
func (redisErr) RedisError()     {}

var _ redis.Error = redisErr("")
