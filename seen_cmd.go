package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"

	"fanout/history"
)

const seenUsage = `usage: fanout seen USERNAME [USERNAME ...]

Prints, for each user, the highest event id a client of the user
acknowledged having shown (read receipts): one JSON line
{"username":"alice","seen":"1733050000000-0"}, or "seen":null when none was.
"Has alice seen event X" is seen >= X, comparing ids as (milliseconds,
sequence) pairs of numbers. It asks Redis, with the instances' Redis
variables (REDIS_URL or REDIS_HOST, REDIS_PORT, …; REDIS_SENTINEL_*;
REDIS_CLUSTER_ADDRS) and their PUBSUB_SHARDED.

Exit status 1 when Redis fails; 2 for a bad username.
`

// runSeen answers `fanout seen`.
func runSeen(ctx context.Context, args []string, lookupEnv func(string) (string, bool), _ io.Reader, stdout, stderr io.Writer) int {
	fail := func(status int, format string, a ...any) int {
		fmt.Fprintf(stderr, "fanout seen: "+format+"\n", a...)
		return status
	}
	fs := flag.NewFlagSet("fanout seen", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, seenUsage)
			return 0
		}
		return fail(usageError, "%v (see fanout seen --help)", err)
	}
	users := fs.Args()
	if err := checkUsernames("seen", users); err != nil {
		return fail(usageError, "%v", err)
	}
	env := &envReader{lookup: lookupEnv}
	cfg := env.commandConfig()
	layout := history.Layout{Sharded: env.boolean("PUBSUB_SHARDED", false)}
	if env.err != nil {
		return fail(usageError, "configuration: %v", env.err)
	}
	rdb := newCommandRedisClient(cfg)
	defer rdb.Close()
	out := bufio.NewWriter(stdout)
	enc := json.NewEncoder(out)
	for _, u := range users {
		id, err := layout.Seen(ctx, rdb, u)
		if err != nil {
			return fail(1, "%v", err)
		}
		line := struct {
			Username string  `json:"username"`
			Seen     *string `json:"seen"`
		}{Username: u}
		if id != "" {
			line.Seen = &id
		}
		_ = enc.Encode(line)
	}
	if err := out.Flush(); err != nil {
		return fail(1, "write: %v", err)
	}
	return 0
}
