package main

import (
	"errors"
	"testing"

	"github.com/redis/go-redis/v9"

	"fanout/history"
)

func TestKeySlotIsRedisClusters(t *testing.T) {
	for key, want := range map[string]int{
		// CRC16/XMODEM("123456789") is 0x31C3, the Cluster spec's check value.
		"123456789":                            0x31C3,
		"{123456789}.history":                  0x31C3,
		"a{}b":                                 history.Slot("a{}b"), // an empty tag hashes the whole name
		"workflow:events:alice":                history.Slot("fanout:history:{workflow:events:alice}"),
		"x{123456789}{other}":                  0x31C3,
		"no-tag-{only-opening":                 history.Slot("no-tag-{only-opening"),
		"fanout:history:{workflow:events:bob}": history.Slot("workflow:events:bob"),
	} {
		if got := history.Slot(key); got != want {
			t.Errorf("history.Slot(%q) = %d, want %d", key, got, want)
		}
	}
	if history.Slot("a{}b") == history.Slot("") {
		t.Error("an empty hash tag must not hash to the empty name's slot")
	}
}

func TestMovedSlotReadsOnlyMovedReplies(t *testing.T) {
	slot, ok := movedSlot(redisErr("MOVED 3999 127.0.0.1:6381"))
	if !ok || slot != 3999 {
		t.Fatalf("MOVED: %d %v", slot, ok)
	}
	for _, err := range []error{redisErr("ASK 3999 127.0.0.1:6381"), redisErr("MOVED x y"), errors.New("MOVED 1 a")} {
		if _, ok := movedSlot(err); ok {
			t.Errorf("%v read as MOVED", err)
		}
	}
}

// redisErr is an error reply, as go-redis's reader returns one.
type redisErr string

func (e redisErr) Error() string { return string(e) }
func (redisErr) RedisError()     {}

var _ redis.Error = redisErr("")
