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

	pipe := pipeliner.Pipeline()
	// The script must be on the server before the EVALSHA: a pipeline
	// cannot fall back to EVAL on NOSCRIPT as Script.Run does. On one
	// server, loading it first in the same pipeline costs no round trip.
	// A cluster client would send that keyless SCRIPT LOAD to any node, so
	// there ScriptLoad on the client loads it on every node first. (Not
	// publishScript.Load on the pipeline: it would store the empty reply
	// it sees before Exec as the script's hash.)
	if _, single := p.rdb.(*redis.Client); single {
		pipe.ScriptLoad(ctx, PublishSource)
	} else if err := p.rdb.ScriptLoad(ctx, PublishSource).Err(); err != nil {
		return nil, fmt.Errorf("load the publish script: %w", err)
	}
	cmds := make([]*redis.Cmd, len(payloads))
	for i, payload := range payloads {
		cmds[i] = publishScript.EvalSha(ctx, pipe, []string{HistoryKey(username)},
			Channel(username), payload, p.retention.MaxLen, p.retention.TTL.Milliseconds())
	}
	// Each command's own error is read below.
	_, _ = pipe.Exec(ctx)
	ids = make([]string, 0, len(payloads))
	for i, cmd := range cmds {
		id, err := cmd.Text()
		if err != nil {
			return ids, fmt.Errorf("publish event %d to %s: %w", i, Channel(username), err)
		}
		ids = append(ids, id)
	}
	return ids, nil
}
