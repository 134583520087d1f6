package history

import (
	"context"
	"fmt"
	"math"
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
// payload: that is this event, recorded by a faster instance, and its id
// is the answer. When there is none, this instance is the first to see the
// event: it appends it. Two identical payloads published one after the
// other are two entries, since the second instance's cursor has moved past
// the first by then. An event PublishSource published comes in an envelope
// with its id: it is not looked for, it only moves the cursor (known).
//
// The search looks up to 1024 entries past the cursor: events published
// with the script while a plain PUBLISH before them waited to be recorded
// come first in the history. A plain event followed by more than 1024
// script-published events of its user before any instance recorded it is
// appended again by the instances that do not find it.
//
// An instance that has no cursor for a user starts from its horizon: the
// time it subscribed (an id made of Redis's clock just before PSUBSCRIBE),
// or later the newest cursor it dropped for an idle user. Every entry after
// the horizon and before the first event the instance sees for the user
// is one it will never see (published between its clock reading and its
// subscription, or appended late by a slower instance): the search looks
// up to 1024 entries further for that first event, and the cursor then
// starts at it, leaving them behind. The one case this cannot tell apart:
// such an entry byte-identical to the first event the instance sees for
// that user; it takes that entry's id.
//
// An instance more than the retention behind for a user (its cursor's
// entry was trimmed away) appends nothing: the events it sees were
// appended, and trimmed, already. They get no id ("") until it catches up.
//
// An instance that starts from a horizon while other instances are
// subscribed to the user all along (SUBSCRIBE_MODE=user: one of them, the
// recorder lease holder, records every event) may see its first event
// before those others have appended the events published just before it.
// Appending it then would put it ahead of them in the history. Such an
// instance asks to wait ("w" for the cursor's kind): until it finds its
// first event, it appends nothing and gets its events back as pending, to
// offer again a moment later. Once it has found one, everything published
// before is in the history, and it appends as usual.
//
// One instance may append alone (AppendSource): while another instance
// holds SoloKey, this script appends nothing. An event it does not find
// is pending, as above, until the holder has appended it or given the key
// up.
//
// One call records the events of several users, in one batch: KEYS are
// their history keys (on a Redis Cluster, keys of one hash slot), then
// SoloKey when the call names its instance. ARGV: MAXLEN, TTL in
// milliseconds, the instance ("" for none: no SoloKey, as on a Redis
// Cluster, where it is in another slot), then for each key in turn: the cursor (the
// horizon when there is none), "1" when the cursor is an entry's id ("0"
// for a horizon, "w" for a horizon from which the first event is only to
// be found, not appended), the number of consumed ids, those ids, the
// number of payloads, then the payloads in the order they were received;
// an event that came in an envelope is sent as its envelope without the
// payload ("#1733050000000-0 ", Envelope(id, "")): it is in the history
// already, and only moves the cursor as Cursor.Known does. It returns one
// reply per key: the new cursor, its "1" or "0", the consumed ids, then
// for each payload its id ("" when it lags or is pending) and 1 when this
// call appended it, 2 when it is pending, 0 otherwise.
const RecordSource = luaIDs + `
local maxlen, ttl, owner = ARGV[1], ARGV[2], ARGV[3]
-- The fence (SoloKey, the last key): held by another instance, which
-- appends every event alone, this one appends nothing. Read once, and
-- only by a call about to append: most calls of several instances find
-- their events.
local nusers, fence = #KEYS, nil
if owner == '' then fence = false else nusers = #KEYS - 1 end
local function fenced()
  if fence == nil then
    local holder = redis.call('GET', KEYS[#KEYS])
    fence = holder ~= false and holder ~= owner
  end
  return fence
end
-- user records the payloads of KEYS[u], whose arguments start at ARGV[a];
-- it returns its reply and where the next user's arguments start.
local function user(u, a)
  local key = KEYS[u]
  local cursor, entry, nconsumed = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local first = a + 4 + nconsumed
  local last = first + tonumber(ARGV[a + 3 + nconsumed]) - 1
  -- Mostly: one payload, after an entry, nothing consumed, and the event
  -- is the first entry after the cursor (a faster instance appended it)
  -- or there is none (this instance is the first).
  if first == last and entry == '1' and nconsumed == 0 and string.byte(ARGV[first]) ~= 35 then
    local page = redis.call('XRANGE', key, '(' .. cursor, '+', 'COUNT', 1)
    if #page == 0 and not fenced() then
      local id = redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'd', ARGV[first])
      redis.call('PEXPIRE', key, ttl)
      return {id, '1', {}, id, 1}, last + 1
    end
    if #page > 0 and page[1][2][2] == ARGV[first] then
      return {page[1][1], '1', {}, page[1][1], 0}, last + 1
    end
  end
  local waitFirst = entry == 'w'
  if waitFirst then entry = '0' end
  local consumed, count = {}, 0
  for i = 1, nconsumed do
    consumed[ARGV[a + 2 + i]] = true
    count = count + 1
  end
  local anyAppended = false
  -- one records one payload; it returns its id and 1 when it appended it,
  -- 0 when not, or nil and 2 when the payload is pending.
  local function one(payload)
    local found, skipped, from, seen = nil, false, cursor, 0
    -- Entries this instance will see later can come first: events the
    -- publish script appended while a plain PUBLISH before them waited to
    -- be recorded, and from a horizon the events published between the
    -- instance's clock reading and its subscription.
    local limit, pagesize = 1024, 64
    while not found and seen < limit do
      -- Mostly the entry is the first one after the cursor, or there is none.
      local n = pagesize
      if seen == 0 then n = 1 end
      local page = redis.call('XRANGE', key, '(' .. from, '+', 'COUNT', n)
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
      if #page < n then break end
    end
    local appended = 0
    if not found and entry == '1' and seen > 0 then
      -- Entries after the cursor, none of them this event, and the
      -- cursor's own entry trimmed away: this instance lags more than the
      -- retention behind, and this event was appended and trimmed already.
      -- (Nothing after the cursor: this instance is the first, as usual.)
      local head = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)
      if #head > 0 and less(cursor, head[1][1]) then
        found = ''
      end
    end
    if not found and (waitFirst and entry == '0' or fenced()) then
      -- Not recorded yet by the instances subscribed all along, or by
      -- the one that appends alone.
      return nil, 2
    end
    if not found then
      found = redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'd', payload)
      appended = 1
      anyAppended = true
    end
    if found == '' then
      -- Left as it is: a later event finds its entry after the cursor.
    elseif skipped and entry == '1' then
      consumed[found] = true
      count = count + 1
    else
      cursor = found
      entry = '1'
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
      consumed, count, entry = {}, 0, '1'
    end
    return found, appended
  end
  -- known takes the id of an event published in an envelope: the cursor
  -- moves to it (Cursor.Known).
  local function known(id)
    if less(cursor, id) then
      cursor, entry = id, '1'
      for c in pairs(consumed) do
        if not less(cursor, c) then
          consumed[c] = nil
          count = count - 1
        end
      end
    end
    return id, 0
  end
  local out = {'', '', {}}
  -- Once one payload is pending, every later one is.
  local pending = false
  for i = first, last do
    local found, appended = '', 2
    if not pending then
      local id = string.match(ARGV[i], '^#(%d+%-%d+) $')
      if id then
        found, appended = known(id)
      else
        found, appended = one(ARGV[i])
      end
      if appended == 2 then
        found, pending = '', true
      end
    end
    out[#out + 1] = found
    out[#out + 1] = appended
  end
  if anyAppended then redis.call('PEXPIRE', key, ttl) end
  local list = {}
  for id in pairs(consumed) do list[#list + 1] = id end
  out[1], out[2], out[3] = cursor, entry, list
  return out, last + 1
end
local replies, a = {}, 4
for u = 1, nusers do
  replies[u], a = user(u, a)
end
return replies
`

var recordScript = redis.NewScript(RecordSource)

// luaIDs begins the scripts that compare event ids: parse splits one into
// its milliseconds and sequence number, less orders two.
const luaIDs = `
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
`

// Cursor is an instance's place in one user's history (see RecordSource).
// The zero Cursor means none.
type Cursor struct {
	After string
	// Entry is set when After is an entry's id, not a horizon.
	Entry    bool
	Consumed []string
	// WaitFirst, from a horizon, asks to find the first event rather than
	// append it: it and the events after it come back Pending until
	// another instance has recorded it (RecordSource).
	WaitFirst bool
}

// Known returns the cursor after an event this instance learned the id of
// from its envelope, without a call to RecordSource: what that script
// would have made of the event, found as the first entry after the cursor.
// It is that entry: the publish script appended it and published it in one
// step, so every entry before it was appended before it was published, and
// this instance, which reads its user's channel in order, has had every
// event published before it (matched: the cursor or Consumed). An id not
// after the cursor leaves it as it is.
func (c Cursor) Known(id string) Cursor {
	known, ok := ParseID(id)
	if !ok {
		return c
	}
	if after, ok := ParseID(c.After); ok && !after.Less(known) {
		return c
	}
	if len(c.Consumed) == 0 {
		return Cursor{After: id, Entry: true}
	}
	kept := c.Consumed[:0:0]
	for _, consumed := range c.Consumed {
		if cid, ok := ParseID(consumed); ok && known.Less(cid) {
			kept = append(kept, consumed)
		}
	}
	return Cursor{After: id, Entry: true, Consumed: kept}
}

// Recorded is the outcome of recording one event.
type Recorded struct {
	// ID is the event's id, "" when the instance lags more than the
	// retention behind (RecordSource).
	ID string
	// Appended is true when this call appended the event, false when
	// another instance or a publisher had.
	Appended bool
	// Pending is set, with Cursor.WaitFirst, for an event not recorded
	// yet by another instance: offer it again.
	Pending bool
}

// Recording is a pipelined Record or RecordUsers call.
type Recording struct {
	cmd *redis.Cmd
	// n is the number of payloads of each user, in order.
	n []int
}

// UserEvents is one user's part of a RecordUsers call: the payloads
// received for Username, in order, and the instance's place in that
// user's history.
type UserEvents struct {
	Username string
	Cursor   Cursor
	Payloads []string
}

// Record is Layout{}.Record: classic keys.
func Record(ctx context.Context, pipe redis.Pipeliner, username string, cur Cursor, retention Retention, payloads []string) Recording {
	return Layout{}.Record(ctx, pipe, username, cur, retention, payloads)
}

// Record queues on pipe the recording of payloads, received in this order
// for username, from cur; a zero cur.After means from the beginning, so an
// instance passes its horizon instead (see RecordSource).
// Load must have been called on the Redis server first (EVALSHA).
func (l Layout) Record(ctx context.Context, pipe redis.Pipeliner, username string, cur Cursor, retention Retention, payloads []string) Recording {
	return l.RecordUsers(ctx, pipe, retention, []UserEvents{{Username: username, Cursor: cur, Payloads: payloads}})
}

// RecordUsers queues on pipe one call recording the events of several
// users (Record, for each). On a Redis Cluster every user's key must be in
// one hash slot (KeySlot of Layout.Key).
func (l Layout) RecordUsers(ctx context.Context, pipe redis.Pipeliner, retention Retention, users []UserEvents) Recording {
	return l.RecordUsersAs(ctx, pipe, retention, "", users)
}

// RecordUsersAs is RecordUsers by instance owner, which appends nothing
// while another instance holds SoloKey (AppendSource). Not on a Redis
// Cluster, where SoloKey is in another slot than the users' keys.
func (l Layout) RecordUsersAs(ctx context.Context, pipe redis.Pipeliner, retention Retention, owner string, users []UserEvents) Recording {
	retention = retention.withDefaults()
	keys := make([]string, len(users), len(users)+1)
	size := 3
	for _, u := range users {
		size += 4 + len(u.Cursor.Consumed) + len(u.Payloads)
	}
	args := make([]any, 0, size)
	args = append(args, retention.MaxLen, retention.TTL.Milliseconds(), owner)
	n := make([]int, len(users))
	for i, u := range users {
		keys[i] = l.Key(u.Username)
		n[i] = len(u.Payloads)
		cur := u.Cursor
		after := cur.After
		if after == "" {
			after = "0-0"
		}
		entry := "0"
		switch {
		case cur.Entry:
			entry = "1"
		case cur.WaitFirst:
			entry = "w"
		}
		args = append(args, after, entry, len(cur.Consumed))
		for _, id := range cur.Consumed {
			args = append(args, id)
		}
		args = append(args, len(u.Payloads))
		for _, p := range u.Payloads {
			args = append(args, p)
		}
	}
	if owner != "" {
		keys = append(keys, SoloKey)
	}
	return Recording{cmd: recordScript.EvalSha(ctx, pipe, keys, args...), n: n}
}

// Horizon returns the cursor of an instance that subscribed at t (by
// Redis's clock): every entry appended from then on is after it.
func Horizon(t time.Time) Cursor {
	// Just before the first id of that millisecond: the search after it
	// excludes the cursor.
	return Cursor{After: ID{Ms: uint64(t.UnixMilli()) - 1, Seq: math.MaxUint64}.String()}
}

// Result returns the ids of the recorded payloads, in order, and the new
// cursor, once the pipeline has run: those of a Record call's one user.
func (r Recording) Result() ([]Recorded, Cursor, error) {
	users, err := r.Users()
	if err != nil {
		return nil, Cursor{}, err
	}
	return users[0].Recorded, users[0].Cursor, nil
}

// UserRecorded is what a Recording returns for one user.
type UserRecorded struct {
	// Recorded is each payload's outcome, in order.
	Recorded []Recorded
	// Cursor is the instance's new place in the user's history.
	Cursor Cursor
}

// Users returns, once the pipeline has run, what the call recorded for
// each user, in the order of RecordUsers.
func (r Recording) Users() ([]UserRecorded, error) {
	replies, err := r.cmd.Slice()
	if err != nil {
		return nil, err
	}
	if len(replies) != len(r.n) {
		return nil, fmt.Errorf("record script returned %d replies for %d users", len(replies), len(r.n))
	}
	out := make([]UserRecorded, len(r.n))
	for u, reply := range replies {
		vals, _ := reply.([]any)
		if len(vals) != 3+2*r.n[u] {
			return nil, fmt.Errorf("record script returned %d values for %d events", len(vals), r.n[u])
		}
		var cur Cursor
		cur.After, _ = vals[0].(string)
		entry, _ := vals[1].(string)
		cur.Entry = entry == "1"
		if list, ok := vals[2].([]any); ok {
			for _, v := range list {
				if s, ok := v.(string); ok {
					cur.Consumed = append(cur.Consumed, s)
				}
			}
		}
		recs := make([]Recorded, r.n[u])
		for i := range recs {
			id, _ := vals[3+2*i].(string)
			appended, _ := vals[4+2*i].(int64)
			recs[i] = Recorded{ID: id, Appended: appended == 1, Pending: appended == 2}
		}
		out[u] = UserRecorded{Recorded: recs, Cursor: cur}
	}
	return out, nil
}

// IsNoScript reports whether err says the server does not have a script
// (it restarted, or SCRIPT FLUSH): Load it and try again.
func IsNoScript(err error) bool {
	return err != nil && redis.HasErrorPrefix(err, "NOSCRIPT")
}

// Load loads the scripts into the Redis server of rdb (every master of a
// *redis.ClusterClient).
func Load(ctx context.Context, rdb redis.Scripter) error {
	if err := recordScript.Load(ctx, rdb).Err(); err != nil {
		return fmt.Errorf("load the record script: %w", err)
	}
	if err := publishScript.Load(ctx, rdb).Err(); err != nil {
		return fmt.Errorf("load the publish script: %w", err)
	}
	if err := publishShardedScript.Load(ctx, rdb).Err(); err != nil {
		return fmt.Errorf("load the sharded publish script: %w", err)
	}
	if err := appendScript.Load(ctx, rdb).Err(); err != nil {
		return fmt.Errorf("load the append script: %w", err)
	}
	if err := AckScript.Load(ctx, rdb).Err(); err != nil {
		return fmt.Errorf("load the ack script: %w", err)
	}
	return nil
}
