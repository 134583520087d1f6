// Package presence keeps in Redis which users have connections on which
// fanout instance, answers "is anyone watching alice, and on how many
// connections" from any process that reaches that Redis, and publishes a
// user's transitions online and offline exactly once across instances.
//
// Every key lives in one Redis Cluster hash slot ({fanout:presence}), so
// that one script sees them all:
//
//	{fanout:presence}:instances  sorted set: instance id → the time (ms, Redis's
//	                             clock) after which it counts as dead
//	{fanout:presence}:i:<id>     hash: username → that instance's connections
//	{fanout:presence}:online     hash: the users announced online
//	{fanout:presence}:pending    sorted set: username → when it goes offline
//	                             unless a connection comes back before
//	{fanout:presence}:since      when an instance first wrote presence
//
// An instance writes only what changed: once per tick (Instance.Tick) it
// renews its own entry (one command, whatever its connections) and sets the
// counts of the users whose connections changed since the last tick. The
// decisions are made in the same script, atomically: a user whose count
// anywhere becomes positive is announced online if it was not; a user
// whose count falls to zero everywhere is announced offline after Grace,
// unless a connection came back; the users of an instance whose entry
// expired (it died without leaving) get the same grace from the moment it
// expired. Redis's clock decides every time, so instances' clocks need not
// agree.
package presence

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultChannel is where transitions are published (PRESENCE_CHANNEL).
const DefaultChannel = "fanout:presence"

// The keys; see the package comment.
const (
	keyPrefix      = "{fanout:presence}:"
	InstancesKey   = keyPrefix + "instances"
	OnlineKey      = keyPrefix + "online"
	PendingKey     = keyPrefix + "pending"
	SinceKey       = keyPrefix + "since"
	InstancePrefix = keyPrefix + "i:"
)

// Status is one user's presence: connections counts their WebSocket and
// SSE connections on every live instance.
type Status struct {
	Username    string `json:"username"`
	Online      bool   `json:"online"`
	Connections int    `json:"connections"`
}

// ErrNeverWritten is Query's error when no instance has ever written
// presence to this Redis: the instances run with PRESENCE=off, or none has
// run, so "offline" would be a guess.
var ErrNeverWritten = errors.New("no fanout instance has written presence to this Redis (PRESENCE=off on the instances, or none has run yet)")

// QuerySource is the query script: KEYS[1] the instances key, KEYS[2] the
// since key, ARGV[1] the instance key prefix, then the usernames. It
// returns -1 when presence was never written, else one connection count
// per username, in order. redis-cli:
//
//	redis-cli EVAL "$(fanout presence --script)" 2 '{fanout:presence}:instances' '{fanout:presence}:since' '{fanout:presence}:i:' alice bob
const QuerySource = `
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
local out = {}
for i = 2, #ARGV do
  local n = 0
  for _, j in ipairs(live) do
    n = n + (tonumber(redis.call('HGET', ARGV[1] .. j, ARGV[i])) or 0)
  end
  out[#out + 1] = n
end
return out`

var queryScript = redis.NewScript(QuerySource)

// Query returns the presence of each username, in order, from any Redis
// client (the daemon's, a workflow engine's). It returns ErrNeverWritten
// when no instance ever wrote presence there.
func Query(ctx context.Context, rdb redis.Scripter, usernames ...string) ([]Status, error) {
	args := make([]any, 0, 1+len(usernames))
	args = append(args, InstancePrefix)
	for _, u := range usernames {
		args = append(args, u)
	}
	res, err := queryScript.Run(ctx, rdb, []string{InstancesKey, SinceKey}, args...).Result()
	if err != nil {
		return nil, fmt.Errorf("read presence: %w", err)
	}
	if n, ok := res.(int64); ok && n == -1 {
		return nil, ErrNeverWritten
	}
	counts, ok := res.([]any)
	if !ok || len(counts) != len(usernames) {
		return nil, fmt.Errorf("read presence: unexpected reply %v", res)
	}
	out := make([]Status, len(usernames))
	for i, u := range usernames {
		n, _ := counts[i].(int64)
		out[i] = Status{Username: u, Online: n > 0, Connections: int(n)}
	}
	return out, nil
}

// tickSource is the instance's tick: see Instance.Tick. KEYS: instances,
// since, online, pending, this instance's hash. ARGV: instance id, TTL
// (ms), grace (ms), channel, instance key prefix, leaving ("1" or "0"),
// then username, count pairs. It returns the transitions it published.
const tickSource = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, ttl, grace, channel, prefix, leaving = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6] == '1'
redis.call('SET', KEYS[2], now, 'NX')
local changed = {}
for i = 7, #ARGV, 2 do
  local u, n = ARGV[i], tonumber(ARGV[i + 1])
  if n > 0 and not leaving then
    redis.call('HSET', KEYS[5], u, n)
  else
    redis.call('HDEL', KEYS[5], u)
  end
  changed[#changed + 1] = u
end
if leaving then
  for _, u in ipairs(redis.call('HKEYS', KEYS[5])) do changed[#changed + 1] = u end
  redis.call('DEL', KEYS[5])
  redis.call('ZREM', KEYS[1], id)
else
  redis.call('ZADD', KEYS[1], now + ttl, id)
end
-- Instances that died without leaving: their users get the grace from
-- the moment the instance expired.
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'WITHSCORES', 'LIMIT', 0, 8)
for i = 1, #dead, 2 do
  local k = prefix .. dead[i]
  local at = tonumber(dead[i + 1])
  for _, u in ipairs(redis.call('HKEYS', k)) do
    if redis.call('HEXISTS', KEYS[3], u) == 1 then
      redis.call('ZADD', KEYS[4], 'NX', at + grace, u)
    end
  end
  redis.call('DEL', k)
  redis.call('ZREM', KEYS[1], dead[i])
end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
local function total(u)
  local n = 0
  for _, j in ipairs(live) do
    n = n + (tonumber(redis.call('HGET', prefix .. j, u)) or 0)
  end
  return n
end
local published = 0
local function announce(u, online)
  redis.call('PUBLISH', channel, '{"username":' .. cjson.encode(u) .. ',"online":' .. tostring(online) .. '}')
  published = published + 1
end
for _, u in ipairs(changed) do
  if total(u) > 0 then
    redis.call('ZREM', KEYS[4], u)
    if redis.call('HSETNX', KEYS[3], u, 1) == 1 then announce(u, true) end
  elseif redis.call('HEXISTS', KEYS[3], u) == 1 then
    redis.call('ZADD', KEYS[4], 'NX', now + grace, u)
  end
end
for _, u in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 1000)) do
  redis.call('ZREM', KEYS[4], u)
  if total(u) == 0 and redis.call('HDEL', KEYS[3], u) == 1 then announce(u, false) end
end
return published`

var tickScript = redis.NewScript(tickSource)

// Update is a user's connection count on this instance.
type Update struct {
	Username    string
	Connections int
}

// MaxUpdates is the most updates one Tick call carries.
const MaxUpdates = 1000

// Instance is one daemon's side of presence.
type Instance struct {
	// ID names the instance; a restarted process is a new instance.
	ID string
	// TTL is how long after its last tick an instance that died stops
	// counting (PRESENCE_TTL); Interval is how often it ticks, so its
	// entry is written to expire TTL - Interval after each tick, and a
	// dead instance's users are counted out within TTL of its death.
	TTL, Interval time.Duration
	// Grace is how long a user with no connection left anywhere waits
	// before it is announced offline (PRESENCE_GRACE).
	Grace time.Duration
	// Channel is where transitions are published (PRESENCE_CHANNEL).
	Channel string
}

// Tick renews the instance's entry, records updates (at most MaxUpdates),
// counts out the users of instances that died, and publishes the
// transitions that are due; leaving takes the instance out instead of
// renewing it, all of its users with it. It returns how many transitions
// it published.
func (in *Instance) Tick(ctx context.Context, rdb redis.Scripter, updates []Update, leaving bool) (int, error) {
	if len(updates) > MaxUpdates {
		return 0, fmt.Errorf("presence: %d updates in one tick, at most %d", len(updates), MaxUpdates)
	}
	leave := "0"
	if leaving {
		leave = "1"
	}
	expireIn := in.TTL - in.Interval
	args := make([]any, 0, 6+2*len(updates))
	args = append(args, in.ID, expireIn.Milliseconds(), in.Grace.Milliseconds(), in.Channel, InstancePrefix, leave)
	for _, u := range updates {
		args = append(args, u.Username, strconv.Itoa(u.Connections))
	}
	keys := []string{InstancesKey, SinceKey, OnlineKey, PendingKey, InstancePrefix + in.ID}
	n, err := tickScript.Run(ctx, rdb, keys, args...).Int()
	if err != nil {
		return 0, fmt.Errorf("presence tick: %w", err)
	}
	return n, nil
}
