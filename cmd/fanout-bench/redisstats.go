package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"fanout/history"

	"github.com/redis/go-redis/v9"
)

// userNames returns prefix0 .. prefix(n-1).
func userNames(prefix string, n int) []string {
	users := make([]string, n)
	for i := range users {
		users[i] = prefix + strconv.Itoa(i)
	}
	return users
}

// redisInfo returns the fields of one INFO section (an error for a nil
// client: a cluster's nodes are read one by one, cluster.go).
func redisInfo(rdb *redis.Client, section string) (map[string]string, error) {
	if rdb == nil {
		return nil, errors.New("no single Redis")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	raw, err := rdb.Info(ctx, section).Result()
	if err != nil {
		return nil, err
	}
	return infoFields(raw), nil
}

// redisCPU returns Redis's CPU time so far in µs (INFO cpu: used_cpu_sys +
// used_cpu_user, which Redis reports with µs resolution), or -1.
func redisCPU(rdb *redis.Client) float64 {
	f, err := redisInfo(rdb, "cpu")
	if err != nil {
		return -1
	}
	sys, err1 := strconv.ParseFloat(f["used_cpu_sys"], 64)
	user, err2 := strconv.ParseFloat(f["used_cpu_user"], 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return (sys + user) * 1e6
}

// redisCommands returns the commands Redis has run so far (INFO
// commandstats: the calls of every command, those run by scripts included),
// or -1.
func redisCommands(rdb *redis.Client) int64 {
	f, err := redisInfo(rdb, "commandstats")
	if err != nil {
		return -1
	}
	var n int64
	for k, v := range f {
		if !strings.HasPrefix(k, "cmdstat_") {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(v, "calls="), ",")
		c, err := strconv.ParseInt(calls, 10, 64)
		if err != nil {
			return -1
		}
		n += c
	}
	return n
}

// redisMemory returns INFO memory used_memory in bytes, or -1.
func redisMemory(rdb *redis.Client) int64 {
	f, err := redisInfo(rdb, "memory")
	if err != nil {
		return -1
	}
	n, err := strconv.ParseInt(f["used_memory"], 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// historyKeys returns the history keys of a user the bench reads: the
// classic one, and with sharded pub/sub also the one in its channel's slot
// (fanout:history:{workflow:events:<user>}), whichever the daemon writes.
func historyKeys(sharded bool) func(user string) []string {
	if !sharded {
		return func(user string) []string { return []string{history.HistoryKey(user)} }
	}
	return func(user string) []string {
		return []string{history.HistoryKey(user), history.HistoryKey(history.Channel(user))}
	}
}

// classicKeys is historyKeys(false).
var classicKeys = historyKeys(false)

// historyLens returns the XLEN of each user's history keys (0 for none),
// summed per user, pipelined 1 000 users at a time.
func historyLens(rdb redis.Cmdable, users []string, keys func(string) []string) ([]int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lens := make([]int64, len(users))
	for lo := 0; lo < len(users); lo += 1000 {
		hi := min(lo+1000, len(users))
		pipe := rdb.Pipeline()
		cmds := make([][]*redis.IntCmd, hi-lo)
		for i := lo; i < hi; i++ {
			for _, k := range keys(users[i]) {
				cmds[i-lo] = append(cmds[i-lo], pipe.XLen(ctx, k))
			}
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, fmt.Errorf("XLEN: %w", err)
		}
		for i, cs := range cmds {
			for _, c := range cs {
				lens[lo+i] += c.Val()
			}
		}
	}
	return lens, nil
}

// historyEntries returns the entries in the users' history keys and the
// number of those keys that exist.
func historyEntries(rdb redis.Cmdable, users []string, keyNames func(string) []string) (entries, keys int64) {
	lens, err := historyLens(rdb, users, keyNames)
	if err != nil {
		return -1, -1
	}
	for _, n := range lens {
		entries += n
		if n > 0 {
			keys++
		}
	}
	return entries, keys
}

// measureHistory fills in the Redis memory per retained event: memory()
// (used_memory) now minus mem0, over the history entries added since
// entries0.
func (r *report) measureHistory(rdb redis.Cmdable, memory func() int64, users []string, keyNames func(string) []string, mem0, entries0 int64) {
	r.RedisMemBeforeBytes = mem0
	r.RedisMemAfterBytes = memory()
	entries, keys := historyEntries(rdb, users, keyNames)
	if entries < 0 || entries0 < 0 || mem0 < 0 || r.RedisMemAfterBytes < 0 {
		r.Notes = append(r.Notes, "Redis memory or history length not readable")
		return
	}
	r.HistoryEntries, r.HistoryKeys = entries-entries0, keys
	if r.HistoryEntries > 0 {
		r.RedisMemPerEntry = float64(r.RedisMemAfterBytes-mem0) / float64(r.HistoryEntries)
	}
}
