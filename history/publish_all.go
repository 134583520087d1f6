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
	pipeliner, ok := p.rdb.(ScriptPipeliner)
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

	// EVALSHA, as if the server had the script: it mostly has, and
	// ExecScripts loads it when not.
	script, _ := p.Layout.publishScript()
	key, channel := p.Layout.Key(username), Channel(username)
	pipe := pipeliner.Pipeline()
	cmds := make([]*redis.Cmd, len(payloads))
	for i, payload := range payloads {
		cmds[i] = script.EvalSha(ctx, pipe, []string{key},
			channel, payload, p.retention.MaxLen, p.retention.TTL.Milliseconds())
	}
	execErr := ExecScripts(ctx, pipeliner, pipe)
	ids = make([]string, 0, len(payloads))
	for _, cmd := range cmds {
		id, err := cmd.Text()
		if err != nil {
			// execErr is this error, or the failed load of the script.
			p.failed(ctx, execErr)
			return ids, fmt.Errorf("publish event %d to %s: %w", len(ids), channel, execErr)
		}
		ids = append(ids, id)
	}
	return ids, nil
}
