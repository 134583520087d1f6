// Package history is fanout's event history in Redis: one Stream per user,
// the Lua scripts that write it, and what publishers and the daemon share
// about it (key names, event ids, retention).
//
// A publisher that only runs PUBLISH workflow:events:{username} (SPUBLISH
// with PUBSUB_SHARDED=true) needs nothing from here: every fanout instance
// records such an event with RecordSource, and exactly one of them appends
// it. A publisher that wants its event kept even while no instance runs
// appends and publishes it in one atomic step: Publisher.Publish in Go,
// `fanout publish` from a shell, or PublishSource (PublishShardedSource)
// with EVALSHA from any other language.
//
// Keys. A user's channel is Channel(username), "workflow:events:alice", in
// every deployment. Their history is one Stream, whose key depends on the
// Layout:
//
//	classic (single Redis, Sentinel, Cluster)  fanout:history:{alice}                  PUBLISH
//	sharded (PUBSUB_SHARDED=true)               fanout:history:{workflow:events:alice}  SPUBLISH
//
// The braces are a Redis Cluster hash tag: every key a script touches for
// one user lives in one hash slot, and in the sharded layout that slot is
// the channel's, so the node that runs the publish script is the one whose
// SSUBSCRIBE'd instances get the event. Each entry has one field, "d",
// holding the published payload byte for byte. Its entry id
// ("1733050000000-0") is the event id clients see.
package history

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/internal/redisx"
)

// ChannelPrefix starts every user channel: workflow:events:{username}.
const ChannelPrefix = "workflow:events:"

// keyPrefix starts every history key.
const keyPrefix = "fanout:history:"

// The retention defaults (HISTORY_MAX_LEN, HISTORY_TTL).
const (
	DefaultMaxLen = 1000
	DefaultTTL    = time.Hour
)

// Channel returns the pub/sub channel of username.
func Channel(username string) string { return ChannelPrefix + username }

// HistoryKey returns the classic Redis key of username's history Stream,
// Layout{}.Key(username).
func HistoryKey(username string) string { return Layout{}.Key(username) }

// Retention is how much history is kept per user.
type Retention struct {
	// MaxLen is the number of events kept per user (Redis trims to at
	// least this many, "MAXLEN ~"); 0 means DefaultMaxLen.
	MaxLen int64
	// TTL is how long a user's history lives after their last event;
	// 0 means DefaultTTL.
	TTL time.Duration
}

func (r Retention) withDefaults() Retention {
	if r.MaxLen <= 0 {
		r.MaxLen = DefaultMaxLen
	}
	if r.TTL <= 0 {
		r.TTL = DefaultTTL
	}
	return r
}

// PublishSource is the Lua script a publisher runs to append an event to
// its user's history and publish it, atomically:
//
//	EVALSHA <sha1 of PublishSource> 1 fanout:history:{alice} workflow:events:alice '<json>' 1000 3600000
//
// KEYS[1] is the user's history key; ARGV are the channel, the payload,
// the events kept (MAXLEN ~) and the time to live in milliseconds. It
// returns the event id. It publishes the event in an envelope (Envelope:
// '#', the id, a space, the payload), so instances deliver it with its id
// at once, without recording it again; clients get the payload byte for
// byte.
const PublishSource = `local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[1], '#' .. id .. ' ' .. ARGV[2])
return id
`

// PublishShardedSource is PublishSource for the sharded layout
// (PUBSUB_SHARDED=true): SPUBLISH instead of PUBLISH, and KEYS[1] is the
// key tagged on the channel, in the channel's hash slot:
//
//	EVALSHA <sha1 of PublishShardedSource> 1 fanout:history:{workflow:events:alice} workflow:events:alice '<json>' 1000 3600000
//
// A plain PUBLISH would reach no instance: they SSUBSCRIBE.
const PublishShardedSource = `local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SPUBLISH', ARGV[1], '#' .. id .. ' ' .. ARGV[2])
return id
`

var (
	publishScript        = redis.NewScript(PublishSource)
	publishShardedScript = redis.NewScript(PublishShardedSource)
)

// Publisher appends events to a user's history and publishes them in one
// atomic step, so that an event published while no fanout instance runs
// is replayed when a client connects.
type Publisher struct {
	// Layout names the history key and picks PUBLISH or SPUBLISH; it must
	// match the instances' PUBSUB_SHARDED. The zero Layout is classic.
	// Set it before the first Publish.
	Layout Layout

	rdb       redis.Scripter
	retention Retention
}

// NewPublisher returns a classic Publisher writing through rdb (a
// *redis.Client, *redis.ClusterClient or any redis.UniversalClient) with
// the given retention, which should match the instances' HISTORY_MAX_LEN
// and HISTORY_TTL. For instances with PUBSUB_SHARDED=true, set its Layout
// to Layout{Sharded: true}.
func NewPublisher(rdb redis.Scripter, retention Retention) *Publisher {
	return &Publisher{rdb: rdb, retention: retention.withDefaults()}
}

// ErrInvalidPayload is returned for a payload that is not one JSON value:
// fanout instances would not forward it.
var ErrInvalidPayload = errors.New("payload is not valid JSON")

// Publish appends payload to username's history, publishes it on
// username's channel and returns its event id. A server without the script
// (restarted, failed over, SCRIPT FLUSH) gets it with EVAL.
func (p *Publisher) Publish(ctx context.Context, username string, payload []byte) (string, error) {
	if err := CheckUsername(username); err != nil {
		return "", err
	}
	if len(payload) == 0 || !json.Valid(payload) {
		return "", ErrInvalidPayload
	}
	script, _ := p.Layout.publishScript()
	id, err := script.Run(ctx, p.rdb, []string{p.Layout.Key(username)},
		Channel(username), payload, p.retention.MaxLen, p.retention.TTL.Milliseconds()).Text()
	if err != nil {
		p.failed(ctx, err)
		return "", fmt.Errorf("publish to %s: %w", Channel(username), err)
	}
	return id, nil
}

// failed reads a cluster's slot map again after a publish failed other
// than by Redis's answer (the node is gone): go-redis alone keeps sending
// a dead master's slots to it after its replica took over.
func (p *Publisher) failed(ctx context.Context, err error) {
	if !redisx.IsReply(err) {
		redisx.ReloadSlots(ctx, p.rdb)
	}
}

// MaxUsernameBytes is the longest username fanout accepts.
const MaxUsernameBytes = 128

// CheckUsername is fanout's one username rule: 1 to MaxUsernameBytes
// bytes of ASCII letters, digits and . _ @ + -. So no username holds ':'
// (the probe channels rely on it) or a glob character. The error is one
// line saying what to change.
func CheckUsername(username string) error {
	switch {
	case username == "":
		return errors.New("missing username")
	case len(username) > MaxUsernameBytes:
		return fmt.Errorf("username is %d bytes; at most %d are allowed", len(username), MaxUsernameBytes)
	}
	for i := 0; i < len(username); i++ {
		b := username[i]
		ok := 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' ||
			b == '.' || b == '_' || b == '@' || b == '+' || b == '-'
		if !ok {
			return fmt.Errorf("username has %+q at byte %d; use only ASCII letters, digits and . _ @ + -", username[i:i+1], i)
		}
	}
	return nil
}

// ID is a parsed event id: a Redis Stream entry id.
type ID struct{ Ms, Seq uint64 }

// ParseID parses an event id; ok is false for anything that is not one.
func ParseID(s string) (id ID, ok bool) {
	ms, seq, found := strings.Cut(s, "-")
	if !found {
		return ID{}, false
	}
	var err error
	if id.Ms, err = strconv.ParseUint(ms, 10, 64); err != nil {
		return ID{}, false
	}
	if id.Seq, err = strconv.ParseUint(seq, 10, 64); err != nil {
		return ID{}, false
	}
	return id, true
}

// Less reports whether a comes before b.
func (a ID) Less(b ID) bool { return a.Ms < b.Ms || a.Ms == b.Ms && a.Seq < b.Seq }

func (a ID) String() string {
	return strconv.FormatUint(a.Ms, 10) + "-" + strconv.FormatUint(a.Seq, 10)
}

// Event is one retained event.
type Event struct {
	ID   string
	Data string
}

// After is Layout{}.After: classic keys.
func After(ctx context.Context, rdb redis.Cmdable, username, after string, count int64) ([]Event, error) {
	return Layout{}.After(ctx, rdb, username, after, count)
}

// From is Layout{}.From: classic keys.
func From(ctx context.Context, rdb redis.Cmdable, username, from string, count int64) ([]Event, error) {
	return Layout{}.From(ctx, rdb, username, from, count)
}

// Last is Layout{}.Last: classic keys.
func Last(ctx context.Context, rdb redis.Cmdable, username string, n int64) ([]Event, error) {
	return Layout{}.Last(ctx, rdb, username, n)
}

func events(msgs []redis.XMessage) []Event {
	evs := make([]Event, 0, len(msgs))
	for _, m := range msgs {
		d, _ := m.Values["d"].(string)
		evs = append(evs, Event{ID: m.ID, Data: d})
	}
	return evs
}
