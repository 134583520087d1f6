package history

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// RecordSource is the script every fanout instance runs for the events it
// receives by pub/sub, so that a plain PUBLISH is recorded exactly once
// whatever the number of instances, and every instance gives it the same id.
//
// Redis delivers a channel's messages to every subscriber in the same
// order, so the instances agree on the sequence of a user's events, not on
// who sees one first. Each instance keeps, per user, a cursor: the id of
// the last event it matched or recorded (and a few ids it matched out of
// order, "consumed"). For each event the script looks through the history
// after the cursor for the first entry, not consumed, holding the same
// payload: that is this event, recorded by a faster instance (or by
// PublishSource) and its id is the answer. When there is none, this
// instance is the first to see the event: it appends it. Two identical
// payloads published one after the other are two entries, since the second
// instance's cursor has moved past the first by then.
//
// An instance that has no cursor for a user (just started, resubscribed,
// or the user was idle) passes a time window instead: for its first event
// it takes the newest entry of that window with the same payload (at most
// 64 entries back), or appends the event, and its cursor starts there. The
// one case this cannot tell apart: when the first event such an instance
// sees for a user is byte-identical to another one appended within the
// window (published just before the instance subscribed, or just after
// the event, when the instance lags), it takes that event's id.
//
// KEYS[1] is the user's history key. ARGV: MAXLEN, TTL in milliseconds,
// the cursor ("0-0" for none), the window in milliseconds (0: none), the
// number of consumed ids, those ids, then the payloads in the order they
// were received. It returns the new cursor, the consumed ids, then for each
// payload its id and 1 when this call appended it (0 when it was found).
const RecordSource = `
local key, maxlen, ttl = KEYS[1], ARGV[1], ARGV[2]
local cursor, window, nconsumed = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local floor = nil
if window > 0 then
  local t = redis.call('TIME')
  floor = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - window) .. '-0'
end
local consumed, count = {}, 0
for i = 1, nconsumed do
  consumed[ARGV[5 + i]] = true
  count = count + 1
end
local out = {}
for i = 6 + nconsumed, #ARGV do
  local payload = ARGV[i]
  local found, skipped, from, seen = nil, false, cursor, 0
  if floor then
    -- No place yet: the newest entry of the window with this payload.
    local page = redis.call('XREVRANGE', key, '+', floor, 'COUNT', 64)
    for _, e in ipairs(page) do
      if e[2][2] == payload then
        found = e[1]
        break
      end
    end
    floor = nil
    seen = 64
  end
  while not found and seen < 64 do
    -- Mostly the entry is the first one after the cursor, or there is none.
    local count = 16
    if seen == 0 then count = 1 end
    local page = redis.call('XRANGE', key, '(' .. from, '+', 'COUNT', count)
    for _, e in ipairs(page) do
      from = e[1]
      seen = seen + 1
      if not consumed[e[1]] then
        if e[2][2] == payload then
          found = e[1]
          break
        end
        skipped = true
      end
    end
    if #page < count then break end
  end
  local appended = 0
  if not found then
    found = redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'd', payload)
    redis.call('PEXPIRE', key, ttl)
    appended = 1
  end
  if skipped then
    consumed[found] = true
    count = count + 1
  else
    cursor = found
    for id in pairs(consumed) do
      if not less(cursor, id) then
        consumed[id] = nil
        count = count - 1
      end
    end
  end
  if count > 32 then
    for id in pairs(consumed) do
      if less(cursor, id) then cursor = id end
    end
    consumed, count = {}, 0
  end
  out[#out + 1] = found
  out[#out + 1] = appended
end
local list = {}
for id in pairs(consumed) do list[#list + 1] = id end
table.insert(out, 1, list)
table.insert(out, 1, cursor)
return out
`

var recordScript = redis.NewScript(RecordSource)

// Cursor is an instance's place in one user's history (see RecordSource).
// The zero Cursor means none.
type Cursor struct {
	After    string
	Consumed []string
}

// Recorded is the outcome of recording one event.
type Recorded struct {
	ID string
	// Appended is true when this call appended the event, false when
	// another instance or a publisher had.
	Appended bool
}

// Recording is one user's part of a pipelined Record call.
type Recording struct {
	cmd *redis.Cmd
	n   int
}

// Record queues on pipe the recording of payloads, received in this order
// for username, from cursor. window is the search window for an instance
// without a cursor (RecordSource); it is used when cur.After is "".
// Load must have been called on the Redis server first (EVALSHA).
func Record(ctx context.Context, pipe redis.Pipeliner, username string, cur Cursor, window time.Duration, retention Retention, payloads []string) Recording {
	retention = retention.withDefaults()
	after, win := cur.After, int64(0)
	if after == "" {
		after, win = "0-0", window.Milliseconds()
	}
	args := make([]any, 0, 5+len(cur.Consumed)+len(payloads))
	args = append(args, retention.MaxLen, retention.TTL.Milliseconds(), after, win, len(cur.Consumed))
	for _, id := range cur.Consumed {
		args = append(args, id)
	}
	for _, p := range payloads {
		args = append(args, p)
	}
	return Recording{cmd: recordScript.EvalSha(ctx, pipe, []string{HistoryKey(username)}, args...), n: len(payloads)}
}

// Result returns the ids of the recorded payloads, in order, and the new
// cursor, once the pipeline has run.
func (r Recording) Result() ([]Recorded, Cursor, error) {
	vals, err := r.cmd.Slice()
	if err != nil {
		return nil, Cursor{}, err
	}
	if len(vals) != 2+2*r.n {
		return nil, Cursor{}, fmt.Errorf("record script returned %d values for %d events", len(vals), r.n)
	}
	var cur Cursor
	cur.After, _ = vals[0].(string)
	if list, ok := vals[1].([]any); ok {
		for _, v := range list {
			if s, ok := v.(string); ok {
				cur.Consumed = append(cur.Consumed, s)
			}
		}
	}
	out := make([]Recorded, r.n)
	for i := range out {
		id, _ := vals[2+2*i].(string)
		appended, _ := vals[3+2*i].(int64)
		out[i] = Recorded{ID: id, Appended: appended == 1}
	}
	return out, cur, nil
}

// IsNoScript reports whether err says the server does not have a script
// (it restarted, or SCRIPT FLUSH): Load it and try again.
func IsNoScript(err error) bool {
	return err != nil && redis.HasErrorPrefix(err, "NOSCRIPT")
}

// Load loads the scripts into the Redis server of rdb.
func Load(ctx context.Context, rdb redis.Scripter) error {
	if err := recordScript.Load(ctx, rdb).Err(); err != nil {
		return fmt.Errorf("load the record script: %w", err)
	}
	if err := publishScript.Load(ctx, rdb).Err(); err != nil {
		return fmt.Errorf("load the publish script: %w", err)
	}
	return nil
}
