package history

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// ScriptPipeliner is a client that runs scripts and pipelines them: a
// *redis.Client, a *redis.ClusterClient, any redis.UniversalClient.
type ScriptPipeliner interface {
	redis.Scripter
	Pipeline() redis.Pipeliner
}

// ExecScripts runs pipe, a pipeline of rdb holding script calls
// (EVALSHA: Layout.Record, the publish scripts), and recovers from
// NOSCRIPT: a server that lost the scripts (restarted, a replica promoted
// by a failover, SCRIPT FLUSH) refuses each call and runs none. The
// scripts are then loaded (Load: on every master of a *redis.ClusterClient)
// and the refused calls sent again, once, in one more pipeline, so each
// command holds its final result. A refused call is not sent again when a
// later call on the same key was not refused: it would land after that
// one, out of order. It returns the load's error, or else the first
// failed command's, as Exec does.
//
// Loading before every call would cost a round trip (on a cluster, one
// per master), and a pipeline cannot fall back to EVAL per command as
// Script.Run does.
func ExecScripts(ctx context.Context, rdb ScriptPipeliner, pipe redis.Pipeliner) error {
	cmds, err := pipe.Exec(ctx)
	again := refused(cmds)
	if len(again) == 0 {
		return err
	}
	if err := Load(ctx, rdb); err != nil {
		return err
	}
	retry := rdb.Pipeline()
	for _, cmd := range again {
		// Queued again as is: the reply of this run overwrites the
		// command's NOSCRIPT error.
		if err := retry.Process(ctx, cmd); err != nil {
			return fmt.Errorf("queue a script call again: %w", err)
		}
	}
	// Each command's own error is read below.
	_, _ = retry.Exec(ctx)
	for _, cmd := range cmds {
		if err := cmd.Err(); err != nil {
			return err
		}
	}
	return nil
}

// refused returns the commands of cmds refused with NOSCRIPT that can be
// sent again: every later command on their key was refused too.
func refused(cmds []redis.Cmder) []redis.Cmder {
	var again []redis.Cmder
	// ran holds the keys of the later commands that were not refused.
	ran := make(map[string]bool)
	for i := len(cmds) - 1; i >= 0; i-- {
		key := scriptKey(cmds[i])
		if !IsNoScript(cmds[i].Err()) {
			ran[key] = true
			continue
		}
		if !ran[key] {
			again = append(again, cmds[i])
		}
	}
	// In their order in the pipeline.
	for i, j := 0, len(again)-1; i < j; i, j = i+1, j-1 {
		again[i], again[j] = again[j], again[i]
	}
	return again
}

// scriptKey returns the first key of an EVALSHA or EVAL command
// ("EVALSHA sha numkeys key…"), or "" for one without keys and for any
// other command: all those count as on one key.
func scriptKey(cmd redis.Cmder) string {
	switch cmd.Name() {
	case "evalsha", "eval", "evalsha_ro", "eval_ro":
	default:
		return ""
	}
	args := cmd.Args()
	if len(args) < 4 || fmt.Sprint(args[2]) == "0" {
		return ""
	}
	return fmt.Sprint(args[3])
}
