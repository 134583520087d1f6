package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
)

// The exit statuses of `fanout publish`.
const (
	// publishFailed: an event was refused (invalid JSON) or Redis failed.
	publishFailed = 1
	// publishBadUsage: a flag, an argument or an environment variable is
	// wrong; nothing was published.
	publishBadUsage = 2
)

// Bounds of a pipelined batch of stdin lines: one round trip to Redis
// carries at most this many events, or about this many bytes of payload.
const (
	publishBatchEvents = 1000
	publishBatchBytes  = 1 << 20
)

// The bounds of HISTORY_MAX_LEN and HISTORY_TTL (and --max-len, --ttl).
const (
	maxHistoryMaxLen = 1 << 24
	minHistoryTTL    = time.Second
)

const publishUsage = `usage: fanout publish --username NAME [--max-len N] [--ttl DURATION] ['<json>']

Appends one event to NAME's history and publishes it on workflow:events:NAME
in one atomic step, so that it is kept even while no fanout instance runs,
and prints its event id. Without a JSON argument it reads JSON lines from
stdin, one event per non-empty line, and prints one id per event.

Redis is reached as the daemon reaches it: REDIS_URL, or REDIS_HOST,
REDIS_PORT, REDIS_USERNAME, REDIS_PASSWORD, REDIS_DB, REDIS_TLS,
REDIS_TLS_CA_FILE, REDIS_TLS_SKIP_VERIFY; through Sentinel with
REDIS_SENTINEL_ADDRS, REDIS_SENTINEL_MASTER and REDIS_SENTINEL_PASSWORD;
on a Redis Cluster with REDIS_CLUSTER_ADDRS. Give it the instances'
PUBSUB_SHARDED: with true it publishes with SPUBLISH and keeps the history
in fanout:history:{workflow:events:NAME}, in the channel's hash slot (a
plain PUBLISH would reach no instance); otherwise with PUBLISH, in
fanout:history:{NAME}.

  --username NAME    the user whose channel gets the events (required)
  --max-len N        events kept per user (default HISTORY_MAX_LEN, or 1000)
  --ttl DURATION     how long the history lives after its last event
                     (default HISTORY_TTL, or 1h)

An event larger than MAX_MESSAGE_BYTES (default 1 MiB), which the
instances would not deliver, is refused like invalid JSON.

Exit status: 0 when every event was published; 1 when a line is not valid
JSON or too large (the lines before it are published, nothing from it on)
or Redis failed; 2 for bad usage or configuration (nothing is published).
`

// runPublish runs `fanout publish` with the arguments that follow
// "publish" and returns the exit status. Messages go to stderr, one line
// each; event ids go to stdout, one line each.
func runPublish(ctx context.Context, args []string, lookupEnv func(string) (string, bool), stdin io.Reader, stdout, stderr io.Writer) int {
	fail := func(status int, format string, a ...any) int {
		fmt.Fprintf(stderr, "fanout publish: "+format+"\n", a...)
		return status
	}

	fs := flag.NewFlagSet("fanout publish", flag.ContinueOnError)
	// The flag package's own message is several lines with the usage;
	// ours is the one line naming the problem.
	fs.SetOutput(io.Discard)
	username := fs.String("username", "", "")
	maxLen := fs.String("max-len", "", "")
	ttl := fs.String("ttl", "", "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, publishUsage)
			return 0
		}
		return fail(publishBadUsage, "%v (see fanout publish --help)", err)
	}
	if len(fs.Args()) > 1 {
		return fail(publishBadUsage, "%d arguments after the flags; give one JSON event (quoted), or none to read JSON lines from stdin", len(fs.Args()))
	}
	if *username == "" {
		return fail(publishBadUsage, "--username is required: the user whose channel workflow:events:NAME gets the events")
	}
	if err := history.CheckUsername(*username); err != nil {
		return fail(publishBadUsage, "--username: %v", err)
	}

	// Redis as the daemon reaches it, published to as the instances listen
	// (PUBSUB_SHARDED); each retention setting from its flag, or else from
	// the daemon's variable.
	env := &envReader{lookup: lookupEnv}
	cfg := env.commandConfig()
	layout := history.Layout{Sharded: env.boolean("PUBSUB_SHARDED", false)}
	flagValues := &envReader{lookup: func(name string) (string, bool) {
		return fs.Lookup(strings.TrimPrefix(name, "--")).Value.String(), true
	}}
	var retention history.Retention
	if *maxLen != "" {
		retention.MaxLen = flagValues.retentionMaxLen("--max-len")
	} else {
		retention.MaxLen = env.retentionMaxLen("HISTORY_MAX_LEN")
	}
	if *ttl != "" {
		retention.TTL = flagValues.retentionTTL("--ttl")
	} else {
		retention.TTL = env.retentionTTL("HISTORY_TTL")
	}
	// What the instances forward: a larger event would be kept but never
	// delivered.
	maxBytes := env.maxMessageBytes()
	if flagValues.err != nil {
		return fail(publishBadUsage, "%v", flagValues.err)
	}
	if env.err != nil {
		return fail(publishBadUsage, "configuration: %v", env.err)
	}

	// No retries: after a timeout go-redis would send the script again and
	// could publish an event twice. The caller sees the error instead and
	// knows from the ids printed which events are in.
	rdb := newCommandRedisClient(cfg)
	defer rdb.Close()

	pub := history.NewPublisher(rdb, retention)
	pub.Layout = layout
	out := bufio.NewWriter(stdout)
	defer out.Flush()
	if len(fs.Args()) == 1 {
		if n := len(fs.Arg(0)); n > maxBytes {
			return fail(publishFailed, "the event is %d bytes, over MAX_MESSAGE_BYTES (%d), so instances would not deliver it; nothing was published", n, maxBytes)
		}
		id, err := pub.Publish(ctx, *username, []byte(fs.Arg(0)))
		switch {
		case errors.Is(err, history.ErrInvalidPayload):
			return fail(publishFailed, "the event argument is not valid JSON; nothing was published")
		case err != nil:
			return fail(publishFailed, "%v", err)
		}
		fmt.Fprintln(out, id)
		if err := out.Flush(); err != nil {
			return fail(publishFailed, "write the event id: %v", err)
		}
		return 0
	}

	if err := publishLines(ctx, pub, *username, maxBytes, stdin, out); err != nil {
		return fail(publishFailed, "%v", err)
	}
	return 0
}

// commandConfig reads how a command reaches Redis, as the daemon does: the
// Redis variables and the deployment (Sentinel, Cluster). Errors are kept
// in r.err.
func (r *envReader) commandConfig() Config {
	cfg := Config{Redis: r.redisOptions()}
	r.redisDeployment(&cfg)
	return cfg
}

// checkUsernames checks the usernames a command was given: at least one,
// each valid. The error is the command's one line.
func checkUsernames(command string, users []string) error {
	if len(users) == 0 {
		return fmt.Errorf("name at least one user (see fanout %s --help)", command)
	}
	for _, u := range users {
		if err := history.CheckUsername(u); err != nil {
			return fmt.Errorf("%q: %w", u, err)
		}
	}
	return nil
}

// newCommandRedisClient returns the Redis client of a command that reaches
// Redis as the daemon does (publish, presence, seen): no retries, and one
// dial, so that a Redis that is down or does not speak TLS is said at
// once, in the command's one line (go-redis's own log is silenced).
func newCommandRedisClient(cfg Config) redis.UniversalClient {
	opts := *cfg.Redis
	opts.MaxRetries = -1
	opts.DialerRetries = 1
	redis.SetLogger(discardRedisLog{})
	return newRedisClient(cfg, opts)
}

// retentionMaxLen reads the events kept per user (HISTORY_MAX_LEN).
func (r *envReader) retentionMaxLen(name string) int64 {
	return int64(r.intRange(name, history.DefaultMaxLen, 1, maxHistoryMaxLen))
}

// retentionTTL reads how long a user's history lives (HISTORY_TTL).
func (r *envReader) retentionTTL(name string) time.Duration {
	ttl := r.duration(name, history.DefaultTTL)
	if ttl < minHistoryTTL {
		r.fail(name, r.getenv(name), "must be at least "+minHistoryTTL.String())
	}
	return ttl
}

// publishLines publishes each non-empty line of in as one event of
// username, in order, and writes the ids to out. Lines already read go out
// together, in one round trip: a file goes at pipeline speed and a line
// typed by hand goes out at once. It stops at the first line that is not
// valid JSON, after publishing the lines before it.
func publishLines(ctx context.Context, pub *history.Publisher, username string, maxBytes int, in io.Reader, out *bufio.Writer) error {
	reader := bufio.NewReaderSize(in, 64<<10)
	var (
		batch [][]byte
		// lines holds the line number of each event in batch, and size
		// their bytes.
		lines []int
		size  int
	)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		ids, err := pub.PublishAll(ctx, username, batch)
		for _, id := range ids {
			out.WriteString(id)
			out.WriteByte('\n')
		}
		werr := out.Flush()
		if err != nil {
			// ids are those of the events before the first that failed.
			return fmt.Errorf("stdin line %d: %w; the events before it were published (ids on stdout), it and the lines after it may not be",
				lines[min(len(ids), len(lines)-1)], err)
		}
		if werr != nil {
			return fmt.Errorf("write the event ids: %w", werr)
		}
		batch, lines, size = batch[:0], lines[:0], 0
		return nil
	}
	for lineNo := 1; ; lineNo++ {
		line, readErr := reader.ReadBytes('\n')
		if payload := bytes.TrimSpace(line); len(payload) > 0 {
			why := ""
			switch {
			case len(payload) > maxBytes:
				why = fmt.Sprintf("is %d bytes, over MAX_MESSAGE_BYTES (%d), so instances would not deliver it", len(payload), maxBytes)
			case !json.Valid(payload):
				why = "is not valid JSON"
			}
			if why != "" {
				if err := flush(); err != nil {
					return err
				}
				return fmt.Errorf("stdin line %d %s; the events before it were published (ids on stdout), nothing from it on", lineNo, why)
			}
			batch, lines, size = append(batch, payload), append(lines, lineNo), size+len(payload)
		}
		switch {
		case readErr == io.EOF:
			return flush()
		case readErr != nil:
			if err := flush(); err != nil {
				return err
			}
			return fmt.Errorf("read stdin after line %d: %w", lineNo-1, readErr)
		}
		// Send when the next read may wait for input, or the batch is full.
		if reader.Buffered() == 0 || len(batch) >= publishBatchEvents || size >= publishBatchBytes {
			if err := flush(); err != nil {
				return err
			}
		}
	}
}

// discardRedisLog silences go-redis's package-level log.
type discardRedisLog struct{}

func (discardRedisLog) Printf(context.Context, string, ...any) {}
