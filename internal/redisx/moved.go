package redisx

import (
	"errors"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// ClusterSlots is the number of hash slots of a Redis Cluster.
const ClusterSlots = 16384

// MovedAddr returns the address of a MOVED error reply, or "".
func MovedAddr(err error) string {
	addr, _ := redis.IsMovedError(err)
	return addr
}

// MovedSlot returns the slot of a MOVED error reply; ok is false for any
// other error.
func MovedSlot(err error) (slot int, ok bool) {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return 0, false
	}
	f := strings.Fields(rerr.Error())
	if len(f) < 2 || f[0] != "MOVED" {
		return 0, false
	}
	slot, perr := strconv.Atoi(f[1])
	return slot, perr == nil && slot >= 0 && slot < ClusterSlots
}
