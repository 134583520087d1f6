package history

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// Read receipts: per user, the highest event id a client of the user
// acknowledged having shown (an ack), across instances. An id orders events
// (ParseID, Less), so "has alice seen event X" is Seen(alice) ≥ X.

// DefaultReceiptsChannel is where changes of a user's seen id are published
// (RECEIPTS_CHANNEL).
const DefaultReceiptsChannel = "fanout:receipts"

const seenPrefix = "fanout:seen:"

// SeenKey returns the Redis key (a hash: field id) holding username's seen
// id, in the hash slot of the user's history: fanout:seen:{alice}, sharded
// fanout:seen:{workflow:events:alice}.
func (l Layout) SeenKey(username string) string {
	if l.Sharded {
		return seenPrefix + "{" + Channel(username) + "}"
	}
	return seenPrefix + "{" + username + "}"
}

// Seen returns the highest event id of username acknowledged so far, or ""
// when none was.
func (l Layout) Seen(ctx context.Context, rdb redis.Cmdable, username string) (string, error) {
	id, err := rdb.HGet(ctx, l.SeenKey(username), "id").Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the seen id of %s: %w", username, err)
	}
	return id, nil
}

// AckSource is the script that records an acknowledgement: KEYS[1] the
// user's seen key, KEYS[2] the user's history key; ARGV[1] the acknowledged
// id ("" to publish only), ARGV[2] the receipts channel, ARGV[3] the
// username, ARGV[4] how long the seen key lives (ms, the history's TTL).
// An id that is not in the user's history is ignored (-1). A higher id than
// the seen one replaces it (an ack never moves it back). Then, when the seen
// id is ahead of the last one published and the last publication is a
// second old or more, it is published as {"username":…,"seen":…}; when it
// is ahead but a publication was less than a second ago, 2 is added to the
// result: the caller calls again (ARGV[1] "") a second later. Result: 1
// when the seen id moved, 0 when not, plus 2 for a publication owed.
const AckSource = luaIDs + `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local result = 0
local id = ARGV[1]
if id ~= '' then
  if #redis.call('XRANGE', KEYS[2], id, id) == 0 then return -1 end
  local cur = redis.call('HGET', KEYS[1], 'id')
  if not cur or less(cur, id) then
    redis.call('HSET', KEYS[1], 'id', id)
    result = 1
  end
end
local cur = redis.call('HGET', KEYS[1], 'id')
if cur and cur ~= redis.call('HGET', KEYS[1], 'published') then
  local last = tonumber(redis.call('HGET', KEYS[1], 'published_at') or '0')
  if now - last >= 1000 then
    redis.call('HSET', KEYS[1], 'published', cur, 'published_at', now)
    redis.call('PUBLISH', ARGV[2], '{"username":' .. cjson.encode(ARGV[3]) .. ',"seen":' .. cjson.encode(cur) .. '}')
  else
    result = result + 2
  end
end
if cur then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return result`

// AckScript is AckSource, for a pipeline (EVALSHA; ExecScripts recovers
// from NOSCRIPT).
var AckScript = redis.NewScript(AckSource)
