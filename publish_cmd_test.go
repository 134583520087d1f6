package main

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
	"fanout/internal/testproc"
)

// publishResult is what one `fanout publish` run printed and returned.
type publishResult struct {
	stdout, stderr string
	code           int
}

// ids returns the event ids printed on stdout.
func (p publishResult) ids() []string { return strings.Fields(p.stdout) }

// runPublishCommand runs `fanout publish args…` against r with stdin and
// the extra environment variables env.
func runPublishCommand(t *testing.T, r *redisServer, stdin string, env []string, args ...string) publishResult {
	t.Helper()
	cmd := daemonCommand(t, append([]string{"REDIS_HOST=127.0.0.1", "REDIS_PORT=" + strconv.Itoa(r.Port)}, env...)...)
	cmd.Args = append([]string{cmd.Args[0], "publish"}, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := publishResult{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		res.code = exit.ExitCode()
	case err != nil:
		t.Fatalf("run fanout publish: %v", err)
	}
	return res
}

// streamEvents returns the events retained in username's history.
func streamEvents(t *testing.T, r *redisServer, username string) []history.Event {
	t.Helper()
	rdb := r.client()
	evs, err := history.After(context.Background(), rdb, username, "", 100000)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// subscribe subscribes to username's channel and returns the messages.
func subscribe(t *testing.T, r *redisServer, username string) <-chan *redis.Message {
	t.Helper()
	rdb := r.client()
	sub := rdb.Subscribe(context.Background(), history.Channel(username))
	t.Cleanup(func() { sub.Close() })
	// The confirmation: from here on no message is missed.
	if _, err := sub.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	return sub.Channel()
}

// listenBothWays subscribes to username's channel as instances do with
// PUBSUB_SHARDED=true (SSUBSCRIBE) and without (PSUBSCRIBE), and returns
// their messages.
func listenBothWays(t *testing.T, r *redisServer, username string) (sharded, pattern <-chan *redis.Message) {
	t.Helper()
	rdb := r.client()
	ctx := context.Background()
	ssub := rdb.SSubscribe(ctx, history.Channel(username))
	psub := rdb.PSubscribe(ctx, history.ChannelPrefix+"*")
	t.Cleanup(func() {
		ssub.Close()
		psub.Close()
	})
	for _, sub := range []*redis.PubSub{ssub, psub} {
		if _, err := sub.Receive(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return ssub.Channel(), psub.Channel()
}

// expectNothingBefore publishes a marker plainly on username's channel and
// checks that it is the first message pattern gets.
func expectNothingBefore(t *testing.T, r *redisServer, username string, pattern <-chan *redis.Message) {
	t.Helper()
	const marker = `{"marker":true}`
	if err := r.client().Publish(context.Background(), history.Channel(username), marker).Err(); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, pattern); got != marker {
		t.Fatalf("PSUBSCRIBE got %q before the marker: a sharded event reached a pattern subscriber", got)
	}
}

func receive(t *testing.T, messages <-chan *redis.Message) string {
	t.Helper()
	select {
	case m := <-messages:
		return m.Payload
	case <-time.After(5 * time.Second):
		t.Fatal("no message published within 5s")
		return ""
	}
}

func TestPublishCommandAppendsToTheStreamAndPublishes(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	messages := subscribe(t, r, "alice")
	const event = `{"type":"workflow_started","n":1}`
	res := runPublishCommand(t, r, "", nil, "--username", "alice", event)
	if res.code != 0 || res.stderr != "" || len(res.ids()) != 1 || res.stdout != res.ids()[0]+"\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 0 and one id", res.code, res.stdout, res.stderr)
	}
	evs := streamEvents(t, r, "alice")
	if len(evs) != 1 || evs[0].ID != res.ids()[0] || evs[0].Data != event {
		t.Fatalf("stream holds %+v, want one event %s %s", evs, res.ids()[0], event)
	}
	if got, want := receive(t, messages), history.Envelope(res.ids()[0], event); got != want {
		t.Fatalf("SUBSCRIBE got %q, want %q", got, want)
	}
}

func TestPublishCommandWithPUBSUB_SHARDEDSpublishesAndKeepsTheEventInTheChannelsSlot(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	ctx := context.Background()
	sharded, pattern := listenBothWays(t, r, "alice")
	env := []string{"PUBSUB_SHARDED=true"}
	res := runPublishCommand(t, r, "", env, "--username", "alice", `{"n":1}`)
	if res.code != 0 || res.stderr != "" || len(res.ids()) != 1 {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 0 and one id", res.code, res.stdout, res.stderr)
	}
	ids := res.ids()
	res = runPublishCommand(t, r, "{\"n\":2}\n{\"n\":3}\n", env, "--username", "alice")
	if res.code != 0 || res.stderr != "" || len(res.ids()) != 2 {
		t.Fatalf("stdin: exit %d, stdout %q, stderr %q; want 0 and two ids", res.code, res.stdout, res.stderr)
	}
	ids = append(ids, res.ids()...)
	want := []string{`{"n":1}`, `{"n":2}`, `{"n":3}`}
	for i := range want {
		if got, want := receive(t, sharded), history.Envelope(ids[i], want[i]); got != want {
			t.Fatalf("SSUBSCRIBE message %d: %q, want %q", i, got, want)
		}
	}
	expectNothingBefore(t, r, "alice", pattern)

	// The history is under the key tagged on the channel, nothing under
	// the classic one.
	evs, err := history.Layout{Sharded: true}.After(ctx, r.client(), "alice", "", 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != len(want) {
		t.Fatalf("fanout:history:{workflow:events:alice} holds %+v, want %d events", evs, len(want))
	}
	for i := range want {
		if evs[i].ID != ids[i] || evs[i].Data != want[i] {
			t.Fatalf("event %d: %s %s, want %s %s", i, evs[i].ID, evs[i].Data, ids[i], want[i])
		}
	}
	if n := r.client().XLen(ctx, "fanout:history:{workflow:events:alice}").Val(); n != int64(len(want)) {
		t.Fatalf("fanout:history:{workflow:events:alice} holds %d entries, want %d", n, len(want))
	}
	if n := r.client().Exists(ctx, "fanout:history:{alice}").Val(); n != 0 {
		t.Fatal("PUBSUB_SHARDED=true wrote the classic key fanout:history:{alice}")
	}

	// PUBSUB_SHARDED=false is the classic layout.
	res = runPublishCommand(t, r, "", []string{"PUBSUB_SHARDED=false"}, "--username", "alice", `{"n":4}`)
	if res.code != 0 {
		t.Fatalf("PUBSUB_SHARDED=false: exit %d, stderr %q", res.code, res.stderr)
	}
	if got, want := receive(t, pattern), history.Envelope(res.ids()[0], `{"n":4}`); got != want {
		t.Fatalf("PSUBSCRIBE got %q, want %q", got, want)
	}
	if evs := streamEvents(t, r, "alice"); len(evs) != 1 || evs[0].ID != res.ids()[0] {
		t.Fatalf("classic key holds %+v, want the one classic event", evs)
	}
}

func TestPublishCommandPublishesEachStdinLineInOrder(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	messages := subscribe(t, r, "bob")
	// Blank lines, spaces around and CRLF endings do not count; the last
	// line needs no newline.
	in := "{\"n\":1}\n\n  {\"n\":2}  \r\n\t\n\"three\"\n{\"n\":4}"
	want := []string{`{"n":1}`, `{"n":2}`, `"three"`, `{"n":4}`}
	// Then enough lines for several pipelined batches.
	var b strings.Builder
	b.WriteString(in + "\n")
	for i := 5; i <= 2500; i++ {
		fmt.Fprintf(&b, "{\"n\":%d}\n", i)
		want = append(want, fmt.Sprintf(`{"n":%d}`, i))
	}
	res := runPublishCommand(t, r, b.String(), []string{"HISTORY_MAX_LEN=5000"}, "--username", "bob")
	if res.code != 0 || res.stderr != "" {
		t.Fatalf("exit %d, stderr %q", res.code, res.stderr)
	}
	ids, evs := res.ids(), streamEvents(t, r, "bob")
	if len(ids) != len(want) || len(evs) != len(want) {
		t.Fatalf("%d ids, %d events in the stream, want %d", len(ids), len(evs), len(want))
	}
	for i := range want {
		if evs[i].ID != ids[i] || evs[i].Data != want[i] {
			t.Fatalf("event %d: stream has %s %s, want %s %s", i, evs[i].ID, evs[i].Data, ids[i], want[i])
		}
	}
	for i := range want {
		if got, want := receive(t, messages), history.Envelope(ids[i], want[i]); got != want {
			t.Fatalf("message %d: %q, want %q", i, got, want)
		}
	}
}

func TestPublishCommandStopsAtTheFirstInvalidJSONLine(t *testing.T) {
	r := startRedis(t)
	res := runPublishCommand(t, r, "{\"n\":1}\n\n{\"n\":2}\n{\"n\":\n{\"n\":4}\n", nil, "--username", "carol")
	stderr := strings.TrimSuffix(res.stderr, "\n")
	if res.code != 1 || strings.Contains(stderr, "\n") || !strings.Contains(stderr, "line 4") {
		t.Fatalf("exit %d, stderr %q; want 1 and one line naming line 4", res.code, res.stderr)
	}
	evs := streamEvents(t, r, "carol")
	if len(res.ids()) != 2 || len(evs) != 2 || evs[0].Data != `{"n":1}` || evs[1].Data != `{"n":2}` ||
		evs[0].ID != res.ids()[0] || evs[1].ID != res.ids()[1] {
		t.Fatalf("ids %v, stream %+v; want the two lines before the invalid one, and only those", res.ids(), evs)
	}

	// As the argument: nothing is published.
	res = runPublishCommand(t, r, "", nil, "--username", "carol", `{"n":`)
	if res.code != 1 || res.stdout != "" || !strings.Contains(res.stderr, "not valid JSON") {
		t.Fatalf("invalid argument: exit %d, stdout %q, stderr %q", res.code, res.stdout, res.stderr)
	}
	if n := len(streamEvents(t, r, "carol")); n != 2 {
		t.Fatalf("%d events after an invalid argument, want 2", n)
	}
}

func TestPublishCommandRefusesEventsOverMAX_MESSAGE_BYTES(t *testing.T) {
	r := startRedis(t)
	env := []string{"MAX_MESSAGE_BYTES=16"}
	res := runPublishCommand(t, r, "{\"n\":1}\n{\"blob\":\"0123456789\"}\n{\"n\":3}\n", env, "--username", "dora")
	stderr := strings.TrimSuffix(res.stderr, "\n")
	if res.code != 1 || strings.Contains(stderr, "\n") || !strings.Contains(stderr, "line 2") || !strings.Contains(stderr, "MAX_MESSAGE_BYTES") {
		t.Fatalf("exit %d, stderr %q; want 1 and one line naming line 2 and MAX_MESSAGE_BYTES", res.code, res.stderr)
	}
	if evs := streamEvents(t, r, "dora"); len(res.ids()) != 1 || len(evs) != 1 || evs[0].Data != `{"n":1}` {
		t.Fatalf("ids %v, stream %+v; want the line before the large one only", res.ids(), evs)
	}
	res = runPublishCommand(t, r, "", env, "--username", "dora", `{"blob":"0123456789"}`)
	if res.code != 1 || res.stdout != "" || !strings.Contains(res.stderr, "MAX_MESSAGE_BYTES") {
		t.Fatalf("large argument: exit %d, stdout %q, stderr %q", res.code, res.stdout, res.stderr)
	}
	if n := len(streamEvents(t, r, "dora")); n != 1 {
		t.Fatalf("%d events after a large argument, want 1", n)
	}
}

func TestPublishCommandBadUsageExitsWithCode2AndOneLine(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		// names is what the message must name.
		names string
	}{
		{"missing username", nil, []string{`{}`}, "--username"},
		{"empty username", nil, []string{"--username", "", `{}`}, "--username"},
		{"bad username", nil, []string{"--username", "a/b", `{}`}, "--username"},
		{"long username", nil, []string{"--username", strings.Repeat("u", 129), `{}`}, "--username"},
		{"unknown flag", nil, []string{"--username", "u", "--user", "u", `{}`}, "-user"},
		{"two events", nil, []string{"--username", "u", `{}`, `{}`}, "arguments"},
		{"bad max-len flag", nil, []string{"--username", "u", "--max-len", "0", `{}`}, "--max-len"},
		{"bad ttl flag", nil, []string{"--username", "u", "--ttl", "100ms", `{}`}, "--ttl"},
		{"bad HISTORY_MAX_LEN", []string{"HISTORY_MAX_LEN=lots"}, []string{"--username", "u", `{}`}, "HISTORY_MAX_LEN"},
		{"bad HISTORY_TTL", []string{"HISTORY_TTL=forever"}, []string{"--username", "u", `{}`}, "HISTORY_TTL"},
		{"bad REDIS_DB", []string{"REDIS_DB=x"}, []string{"--username", "u", `{}`}, "REDIS_DB"},
		{"bad REDIS_URL", []string{"REDIS_URL=http://x"}, []string{"--username", "u", `{}`}, "REDIS_URL"},
		{"bad PUBSUB_SHARDED", []string{"PUBSUB_SHARDED=sharded"}, []string{"--username", "u", `{}`}, "PUBSUB_SHARDED"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := runPublishCommand(t, r, "", tc.env, tc.args...)
			stderr := strings.TrimSuffix(res.stderr, "\n")
			if res.code != 2 || res.stdout != "" || strings.Contains(stderr, "\n") || !strings.Contains(stderr, tc.names) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want 2 and one line naming %s", res.code, res.stdout, res.stderr, tc.names)
			}
		})
	}
	if keys, _ := r.client().Keys(context.Background(), "fanout:history:*").Result(); len(keys) != 0 {
		t.Fatalf("bad usage kept events: %v", keys)
	}
}

func TestPublishCommandKeepsEventsWhileNoDaemonRuns(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	rdb := r.client()
	ctx := context.Background()
	// No daemon: a plain PUBLISH reaches nobody and nothing keeps it.
	if n, err := rdb.Publish(ctx, history.Channel("dora"), `{"n":0}`).Result(); err != nil || n != 0 {
		t.Fatalf("PUBLISH: %d receivers, %v; want 0", n, err)
	}
	res := runPublishCommand(t, r, "{\"n\":1}\n{\"n\":2}\n", []string{"HISTORY_TTL=10m"}, "--username", "dora")
	if res.code != 0 || len(res.ids()) != 2 {
		t.Fatalf("exit %d, stdout %q, stderr %q", res.code, res.stdout, res.stderr)
	}
	evs := streamEvents(t, r, "dora")
	if len(evs) != 2 || evs[0].Data != `{"n":1}` || evs[1].Data != `{"n":2}` {
		t.Fatalf("stream holds %+v, want the two published events", evs)
	}
	// Retention: HISTORY_TTL from the environment, --ttl over it.
	if ttl := rdb.PTTL(ctx, history.HistoryKey("dora")).Val(); ttl <= 9*time.Minute || ttl > 10*time.Minute {
		t.Fatalf("PTTL %v, want HISTORY_TTL=10m", ttl)
	}
	res = runPublishCommand(t, r, "", []string{"HISTORY_TTL=10m"}, "--username", "dora", "--ttl", "90s", `{"n":3}`)
	if res.code != 0 {
		t.Fatalf("exit %d, stderr %q", res.code, res.stderr)
	}
	if ttl := rdb.PTTL(ctx, history.HistoryKey("dora")).Val(); ttl <= 80*time.Second || ttl > 90*time.Second {
		t.Fatalf("PTTL %v, want --ttl 90s", ttl)
	}
	// --max-len trims (approximately: MAXLEN ~ trims whole stream nodes).
	var lines strings.Builder
	for i := range 1000 {
		fmt.Fprintf(&lines, "{\"n\":%d}\n", i)
	}
	if res = runPublishCommand(t, r, lines.String(), nil, "--username", "eve", "--max-len", "10"); res.code != 0 {
		t.Fatalf("exit %d, stderr %q", res.code, res.stderr)
	}
	if n := rdb.XLen(ctx, history.HistoryKey("eve")).Val(); n < 10 || n >= 1000 {
		t.Fatalf("%d events kept with --max-len 10", n)
	}
}

func TestPublishCommandReportsRedisDownWithExitCode1(t *testing.T) {
	t.Parallel()
	r := redisAt(t) // nothing listens there
	res := runPublishCommand(t, r, "", nil, "--username", "u", `{}`)
	if res.code != 1 || res.stdout != "" || strings.Count(res.stderr, "\n") != 1 || !strings.Contains(res.stderr, "127.0.0.1") {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 1 and one line", res.code, res.stdout, res.stderr)
	}
}

// publishersSection returns docs/publishing.md, the publishers' page.
func publishersSection(t *testing.T) string {
	t.Helper()
	page, err := os.ReadFile("docs/publishing.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(page)
}

// codeBlocks returns the Markdown code blocks of section in language lang.
func codeBlocks(section, lang string) []string {
	var blocks []string
	for _, m := range regexp.MustCompile("(?s)```"+lang+"\n(.*?)```").FindAllStringSubmatch(section, -1) {
		blocks = append(blocks, m[1])
	}
	return blocks
}

func TestDocsPublishingShowsThePublishScriptsAsTheyAre(t *testing.T) {
	section := publishersSection(t)
	lua := codeBlocks(section, "lua")
	if len(lua) != 2 || lua[0] != history.PublishSource || lua[1] != history.PublishShardedSource {
		t.Fatalf("docs/publishing.md's Lua blocks %q, want history.PublishSource %q then history.PublishShardedSource %q",
			lua, history.PublishSource, history.PublishShardedSource)
	}
	for _, lang := range []string{"python", "js"} {
		if blocks := codeBlocks(section, lang); len(blocks) != 1 || !strings.Contains(blocks[0], history.PublishSource) {
			t.Fatalf("docs/publishing.md's %s recipe does not hold history.PublishSource as it is", lang)
		}
	}
}

// docsRedisCLIRecipe returns docs/publishing.md's redis-cli recipe that runs
// the script file, written into dir, against r.
func docsRedisCLIRecipe(t *testing.T, r *redisServer, dir, file, source string) *exec.Cmd {
	t.Helper()
	testproc.NeedTool(t, "redis-cli")
	var recipe string
	for _, block := range codeBlocks(publishersSection(t), "bash") {
		if strings.Contains(block, "< "+file) || strings.Contains(block, "$(cat "+file+")") {
			recipe = block
		}
	}
	if recipe == "" {
		t.Fatalf("docs/publishing.md has no redis-cli recipe running %s", file)
	}
	// The page's commands, against this test's Redis.
	recipe = strings.ReplaceAll(recipe, "redis-cli ", "redis-cli -p "+strconv.Itoa(r.Port)+" ")
	if err := os.WriteFile(filepath.Join(dir, file), []byte(source), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", recipe)
	cmd.Dir = dir
	return cmd
}

// TestDocsEVALSHARecipePublishesAndKeepsTheEvent runs docs/publishing.md's Python
// recipe when python3 has the redis module, and its redis-cli one
// otherwise.
func TestDocsEVALSHARecipePublishesAndKeepsTheEvent(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	section := publishersSection(t)
	messages := subscribe(t, r, "alice")
	dir := t.TempDir()
	var cmd *exec.Cmd
	if exec.Command("python3", "-c", "import redis").Run() == nil {
		recipe := codeBlocks(section, "python")[0]
		cmd = exec.Command("python3", "-c", recipe)
		cmd.Env = append(os.Environ(), "REDIS_URL=redis://"+r.addr())
	} else {
		cmd = docsRedisCLIRecipe(t, r, dir, "publish.lua", history.PublishSource)
	}
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if exit, ok := err.(*exec.ExitError); ok {
			stderr = exit.Stderr
		}
		t.Fatalf("%s: %v\n%s%s", cmd.Args[0], err, out, stderr)
	}
	t.Logf("ran docs/publishing.md's %s recipe", cmd.Args[0])
	id := strings.TrimSpace(string(out))
	const event = `{"type":"workflow_started"}`
	evs := streamEvents(t, r, "alice")
	if len(evs) != 1 || evs[0].ID != id || evs[0].Data != event {
		t.Fatalf("recipe printed %q; stream holds %+v, want one event %s", out, evs, event)
	}
	if got, want := receive(t, messages), history.Envelope(id, event); got != want {
		t.Fatalf("SUBSCRIBE got %q, want %q", got, want)
	}
	// The recipe loaded the script as it is: same SHA-1.
	sum := sha1.Sum([]byte(history.PublishSource))
	if exists, err := r.client().ScriptExists(context.Background(), hex.EncodeToString(sum[:])).Result(); err != nil || !exists[0] {
		t.Fatalf("SCRIPT EXISTS sha1(PublishSource): %v %v", exists, err)
	}
	if ttl := r.client().PTTL(context.Background(), history.HistoryKey("alice")).Val(); ttl <= 59*time.Minute || ttl > time.Hour {
		t.Fatalf("PTTL %v, want 1h", ttl)
	}
}

// TestDocsShardedRecipeSpublishesAndKeepsTheEventInTheChannelsSlot runs
// docs/publishing.md's redis-cli recipe for PUBSUB_SHARDED=true.
func TestDocsShardedRecipeSpublishesAndKeepsTheEventInTheChannelsSlot(t *testing.T) {
	r := startRedis(t)
	sharded, pattern := listenBothWays(t, r, "alice")
	cmd := docsRedisCLIRecipe(t, r, t.TempDir(), "publish-sharded.lua", history.PublishShardedSource)
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if exit, ok := err.(*exec.ExitError); ok {
			stderr = exit.Stderr
		}
		t.Fatalf("recipe: %v\n%s%s", err, out, stderr)
	}
	const event = `{"type":"workflow_started"}`
	id := strings.TrimSpace(string(out))
	if got, want := receive(t, sharded), history.Envelope(id, event); got != want {
		t.Fatalf("SSUBSCRIBE got %q, want %q", got, want)
	}
	expectNothingBefore(t, r, "alice", pattern)
	evs, err := history.Layout{Sharded: true}.After(context.Background(), r.client(), "alice", "", 10)
	if err != nil || len(evs) != 1 || evs[0].ID != id || evs[0].Data != event {
		t.Fatalf("recipe printed %q; sharded key holds %+v (%v), want one event %s", out, evs, err, event)
	}
}

// TestPublishCommandOnARedisClusterPublishesWhereTheInstancesListen runs
// `fanout publish` against a real Redis Cluster (three masters, three
// replicas), as the instances would be configured: classic, where the
// script's PUBLISH on the key's master reaches a subscriber on another
// node through the cluster bus; and PUBSUB_SHARDED=true, where the script
// runs on the master owning the channel's slot and its SPUBLISH reaches
// the SSUBSCRIBE there. The cluster's nodes start without the scripts:
// the pipeline of stdin lines loads them (NOSCRIPT) and sends again.
func TestPublishCommandOnARedisClusterPublishesWhereTheInstancesListen(t *testing.T) {
	skipShort(t, "a Redis Cluster takes seconds to start")
	t.Parallel()
	c := testproc.StartCluster(t)
	ctx := context.Background()
	seeds := "REDIS_CLUSTER_ADDRS=" + strings.Join(c.Seeds(), ",")
	cc := c.Client()
	nodeClient := func(addr string) *redis.Client {
		rdb := redis.NewClient(&redis.Options{Addr: addr})
		t.Cleanup(func() { rdb.Close() })
		return rdb
	}
	// The stdin lines first, through the pipeline, to masters that have
	// no script yet; then one event as the argument.
	publish := func(env []string, user string) []string {
		t.Helper()
		res := runPublishCommand(t, &redisServer{c.Nodes[0].Redis}, "{\"n\":1}\n{\"n\":2}\n", env, "--username", user)
		if res.code != 0 || len(res.ids()) != 2 {
			t.Fatalf("%v, stdin: exit %d, stdout %q, stderr %q", env, res.code, res.stdout, res.stderr)
		}
		ids := res.ids()
		res = runPublishCommand(t, &redisServer{c.Nodes[0].Redis}, "", env, "--username", user, `{"n":3}`)
		if res.code != 0 || len(res.ids()) != 1 {
			t.Fatalf("%v: exit %d, stdout %q, stderr %q", env, res.code, res.stdout, res.stderr)
		}
		return append(ids, res.ids()...)
	}
	want := []string{`{"n":1}`, `{"n":2}`, `{"n":3}`}
	expectKept := func(layout history.Layout, user string, ids []string) {
		t.Helper()
		evs, err := layout.After(ctx, cc, user, "", 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != len(want) {
			t.Fatalf("%s holds %+v, want %d events", layout.Key(user), evs, len(want))
		}
		for i := range want {
			if evs[i].ID != ids[i] || evs[i].Data != want[i] {
				t.Fatalf("%s event %d: %s %s, want %s %s", layout.Key(user), i, evs[i].ID, evs[i].Data, ids[i], want[i])
			}
		}
	}

	t.Run("classic", func(t *testing.T) {
		keyMaster := c.MasterFor(history.HistoryKey("bob"))
		var elsewhere string
		for addr := range c.Masters() {
			if addr != keyMaster {
				elsewhere = addr
			}
		}
		sub := nodeClient(elsewhere).Subscribe(ctx, history.Channel("bob"))
		t.Cleanup(func() { sub.Close() })
		if _, err := sub.Receive(ctx); err != nil {
			t.Fatal(err)
		}
		ids := publish([]string{seeds}, "bob")
		for i := range want {
			if got, want := receive(t, sub.Channel()), history.Envelope(ids[i], want[i]); got != want {
				t.Fatalf("SUBSCRIBE on %s (the key is on %s), message %d: %q, want %q", elsewhere, keyMaster, i, got, want)
			}
		}
		expectKept(history.Layout{}, "bob", ids)
	})

	t.Run("sharded", func(t *testing.T) {
		sharded := history.Layout{Sharded: true}
		channelMaster := c.MasterFor(history.Channel("alice"))
		if keyMaster := c.MasterFor(sharded.Key("alice")); keyMaster != channelMaster {
			t.Fatalf("the sharded key is on %s, the channel on %s", keyMaster, channelMaster)
		}
		sub := nodeClient(channelMaster).SSubscribe(ctx, history.Channel("alice"))
		t.Cleanup(func() { sub.Close() })
		if _, err := sub.Receive(ctx); err != nil {
			t.Fatal(err)
		}
		ids := publish([]string{seeds, "PUBSUB_SHARDED=true"}, "alice")
		for i := range want {
			if got, want := receive(t, sub.Channel()), history.Envelope(ids[i], want[i]); got != want {
				t.Fatalf("SSUBSCRIBE on %s, message %d: %q, want %q", channelMaster, i, got, want)
			}
		}
		expectKept(sharded, "alice", ids)
		if n := cc.Exists(ctx, history.HistoryKey("alice")).Val(); n != 0 {
			t.Fatal("PUBSUB_SHARDED=true wrote the classic key")
		}
	})
}

func TestPublishRefusesARedisDeploymentVariableSetButEmpty(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	res := runPublishCommand(t, r, "", []string{"REDIS_CLUSTER_ADDRS="}, "--username", "u", `{"type":"x"}`)
	if res.code != publishBadUsage || !strings.Contains(res.stderr, "REDIS_CLUSTER_ADDRS: is set but empty") || res.stdout != "" {
		t.Fatalf("exit %d, stderr %q, stdout %q; want exit 2 naming REDIS_CLUSTER_ADDRS", res.code, res.stderr, res.stdout)
	}
}
