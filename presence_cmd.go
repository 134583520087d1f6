package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"

	"fanout/presence"
)

const presenceUsage = `usage: fanout presence USERNAME [USERNAME ...]
       fanout presence --script

Prints, for each user, whether anyone is watching: one JSON line
{"username":"alice","online":true,"connections":2}, where connections
counts the user's WebSocket and SSE connections on every fanout instance
that shares this Redis. It asks Redis, not an instance: it works from any
host that reaches the Redis, with the instances' Redis variables (REDIS_URL
or REDIS_HOST, REDIS_PORT, …; REDIS_SENTINEL_*; REDIS_CLUSTER_ADDRS).

Exit status 1, with a line on stderr, when PRESENCE=off is set here or when
no instance has ever written presence to this Redis; 2 for a bad username.

  --script   print the query script, for redis-cli EVAL or another client
             (docs/presence.md)
`

// runPresence answers `fanout presence`.
func runPresence(ctx context.Context, args []string, lookupEnv func(string) (string, bool), _ io.Reader, stdout, stderr io.Writer) int {
	fail := func(status int, format string, a ...any) int {
		fmt.Fprintf(stderr, "fanout presence: "+format+"\n", a...)
		return status
	}
	fs := flag.NewFlagSet("fanout presence", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	script := fs.Bool("script", false, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, presenceUsage)
			return 0
		}
		return fail(usageError, "%v (see fanout presence --help)", err)
	}
	if *script {
		fmt.Fprintln(stdout, presence.QuerySource)
		return 0
	}
	users := fs.Args()
	if err := checkUsernames("presence", users); err != nil {
		return fail(usageError, "%v", err)
	}
	env := &envReader{lookup: lookupEnv}
	if !env.onOff("PRESENCE", true) {
		return fail(1, "PRESENCE=off is set here: the instances keep no presence with it, so nobody can be said online or offline")
	}
	cfg := env.commandConfig()
	if env.err != nil {
		return fail(usageError, "configuration: %v", env.err)
	}
	rdb := newCommandRedisClient(cfg)
	defer rdb.Close()
	statuses, err := presence.Query(ctx, rdb, users...)
	if err != nil {
		return fail(1, "%v", err)
	}
	out := bufio.NewWriter(stdout)
	enc := json.NewEncoder(out)
	for _, s := range statuses {
		_ = enc.Encode(s)
	}
	if err := out.Flush(); err != nil {
		return fail(1, "write: %v", err)
	}
	return 0
}
