package history

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// SoloKey holds the instance that appends plain PUBLISH events alone, with
// AppendSource: the one fanout instance reading events from this Redis.
// Every other instance's RecordSource call names SoloKey and, while
// another instance holds it, appends nothing (it finds that instance's
// entries, or waits for them). The holder takes it and gives it up; what
// makes appending without a lookup safe is that both scripts read it.
const SoloKey = "fanout:recorder:solo"

// AppendSource appends events without looking for them first, in one call
// for several users, and only while ARGV[1] holds KEYS[1] (SoloKey): an
// instance that knows no other instance reads the events it appends.
// KEYS: SoloKey, then the users' history keys. ARGV: the instance, MAXLEN,
// TTL in milliseconds, then for each history key the number of payloads
// and the payloads, in the order they were received. It returns their ids
// in that order, or nil, having appended nothing, when the instance does
// not hold SoloKey.
const AppendSource = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local maxlen, ttl, a, ids = ARGV[2], ARGV[3], 4, {}
for k = 2, #KEYS do
  local n = tonumber(ARGV[a])
  for i = a + 1, a + n do
    ids[#ids + 1] = redis.call('XADD', KEYS[k], 'MAXLEN', '~', maxlen, '*', 'd', ARGV[i])
  end
  a = a + n + 1
  redis.call('PEXPIRE', KEYS[k], ttl)
end
return ids
`

var appendScript = redis.NewScript(AppendSource)

// Appending is a pipelined AppendUsers call.
type Appending struct {
	cmd *redis.Cmd
	// n is the number of payloads of each user, in order.
	n []int
}

// AppendUsers queues on pipe the appending of every user's Payloads by
// instance owner, without a lookup (AppendSource); the Cursors are not
// used. Not on a Redis Cluster: SoloKey is in another slot.
func (l Layout) AppendUsers(ctx context.Context, pipe redis.Pipeliner, retention Retention, owner string, users []UserEvents) Appending {
	retention = retention.withDefaults()
	keys := make([]string, 0, 1+len(users))
	keys = append(keys, SoloKey)
	size := 3 + len(users)
	for _, u := range users {
		size += len(u.Payloads)
	}
	args := make([]any, 0, size)
	args = append(args, owner, retention.MaxLen, retention.TTL.Milliseconds())
	n := make([]int, len(users))
	for i, u := range users {
		keys = append(keys, l.Key(u.Username))
		n[i] = len(u.Payloads)
		args = append(args, len(u.Payloads))
		for _, p := range u.Payloads {
			args = append(args, p)
		}
	}
	return Appending{cmd: appendScript.EvalSha(ctx, pipe, keys, args...), n: n}
}

// IDs returns, once the pipeline has run, the ids of each user's payloads
// in the order of AppendUsers; held is false, and nothing was appended,
// when the instance did not hold SoloKey.
func (a Appending) IDs() (ids [][]string, held bool, err error) {
	vals, err := a.cmd.Slice()
	if errors.Is(err, redis.Nil) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	total := 0
	for _, n := range a.n {
		total += n
	}
	if len(vals) != total {
		return nil, false, fmt.Errorf("append script returned %d ids for %d events", len(vals), total)
	}
	ids = make([][]string, len(a.n))
	k := 0
	for u, n := range a.n {
		ids[u] = make([]string, n)
		for i := range ids[u] {
			ids[u][i], _ = vals[k].(string)
			k++
		}
	}
	return ids, true, nil
}
