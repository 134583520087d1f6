package history

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// PublishAll publishes payloads to username in order, as Publish would one
// by one, in a single round trip (a pipeline) when the client can
// pipeline, and returns their ids in the same order.
//
// Every payload is checked first: when one is not valid JSON, nothing is
// published and the error wraps ErrInvalidPayload. When Redis fails, ids
// holds the ids of the events published before the first that failed; the
// error names that one's index, and it and the ones after it may or may
// not have been published.
func (p *Publisher) PublishAll(ctx context.Context, username string, payloads [][]byte) (ids []string, err error) {
	if err := CheckUsername(username); err != nil {
		return nil, err
	}
	for i, payload := range payloads {
		if len(payload) == 0 || !json.Valid(payload) {
			return nil, fmt.Errorf("event %d: %w", i, ErrInvalidPayload)
		}
	}
	pipeliner, ok := p.rdb.(interface{ Pipeline() redis.Pipeliner })
	if !ok {
		for _, payload := range payloads {
			id, err := p.Publish(ctx, username, payload)
			if err != nil {
				return ids, err
			}
			ids = append(ids, id)
		}
		return ids, nil
	}

	// EVALSHA first, as if the server had the script: it mostly has. A
	// server that has not (restarted, a replica promoted by a failover,
	// SCRIPT FLUSH) answers NOSCRIPT to every EVALSHA from the first it
	// refused on, and runs none of them: the script is loaded (by a
	// *redis.ClusterClient on every master) and those are sent again, once.
	// A pipeline cannot fall back to EVAL per command as Script.Run does,
	// and loading before every call would cost a round trip (on a cluster,
	// one per master).
	script, source := p.Layout.publishScript()
	key, channel := p.Layout.Key(username), Channel(username)
	ids = make([]string, 0, len(payloads))
	for loaded := false; ; loaded = true {
		pipe := pipeliner.Pipeline()
		rest := payloads[len(ids):]
		cmds := make([]*redis.Cmd, len(rest))
		for i, payload := range rest {
			cmds[i] = script.EvalSha(ctx, pipe, []string{key},
				channel, payload, p.retention.MaxLen, p.retention.TTL.Milliseconds())
		}
		// Each command's own error is read below.
		_, _ = pipe.Exec(ctx)
		retry := false
		for i, cmd := range cmds {
			id, err := cmd.Text()
			if err != nil {
				if !loaded && noScriptFrom(cmds[i:]) {
					retry = true
					break
				}
				p.failed(ctx, err)
				return ids, fmt.Errorf("publish event %d to %s: %w", len(ids), channel, err)
			}
			ids = append(ids, id)
		}
		if !retry {
			return ids, nil
		}
		if err := p.rdb.ScriptLoad(ctx, source).Err(); err != nil {
			p.failed(ctx, err)
			return ids, fmt.Errorf("publish event %d to %s: load the publish script: %w", len(ids), channel, err)
		}
	}
}

// noScriptFrom reports whether every one of cmds failed with NOSCRIPT, so
// that none of them ran and they can be sent again in order.
func noScriptFrom(cmds []*redis.Cmd) bool {
	for _, cmd := range cmds {
		if !IsNoScript(cmd.Err()) {
			return false
		}
	}
	return true
}
