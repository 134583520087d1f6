package main

import (
	"context"
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

// redisInfo returns the fields of one INFO section.
func redisInfo(rdb *redis.Client, section string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	raw, err := rdb.Info(ctx, section).Result()
	if err != nil {
		return nil, err
	}
	fields := map[string]string{}
	for _, line := range strings.Split(raw, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			fields[k] = v
		}
	}
	return fields, nil
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

// historyLens returns XLEN of each user's history key (0 for none),
// pipelined 1 000 at a time.
func historyLens(rdb *redis.Client, users []string) ([]int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lens := make([]int64, len(users))
	for lo := 0; lo < len(users); lo += 1000 {
		hi := min(lo+1000, len(users))
		pipe := rdb.Pipeline()
		cmds := make([]*redis.IntCmd, hi-lo)
		for i := lo; i < hi; i++ {
			cmds[i-lo] = pipe.XLen(ctx, history.HistoryKey(users[i]))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, fmt.Errorf("XLEN: %w", err)
		}
		for i, c := range cmds {
			lens[lo+i] = c.Val()
		}
	}
	return lens, nil
}

// historyEntries returns the entries in the users' history keys and the
// number of those keys that exist.
func historyEntries(rdb *redis.Client, users []string) (entries, keys int64) {
	lens, err := historyLens(rdb, users)
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

// measureHistory fills in the Redis memory per retained event: used_memory
// now minus mem0, over the history entries added since entries0.
func (r *report) measureHistory(rdb *redis.Client, users []string, mem0, entries0 int64) {
	r.RedisMemBeforeBytes = mem0
	r.RedisMemAfterBytes = redisMemory(rdb)
	entries, keys := historyEntries(rdb, users)
	if entries < 0 || entries0 < 0 || mem0 < 0 || r.RedisMemAfterBytes < 0 {
		r.Notes = append(r.Notes, "Redis memory or history length not readable")
		return
	}
	r.HistoryEntries, r.HistoryKeys = entries-entries0, keys
	if r.HistoryEntries > 0 {
		r.RedisMemPerEntry = float64(r.RedisMemAfterBytes-mem0) / float64(r.HistoryEntries)
	}
}
