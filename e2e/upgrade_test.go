package e2e

import (
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"fanout/history"
	"fanout/internal/testproc"
)

// beforeEnvelopes is the last commit whose publish scripts published the
// payload itself (history.Envelope came after it): the version a rolling
// upgrade to envelopes starts from.
const beforeEnvelopes = "e47f3b54d200ebc3bd5e6b907b1975109b8d200a"

// buildPrevious builds the daemon of beforeEnvelopes from this checkout's
// git history, once: a commit never changes, so the binary is kept in the
// user's cache directory (per Go version) and later runs reuse it.
var buildPrevious = sync.OnceValues(func() (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "fanout-e2e")
	bin := filepath.Join(dir, "fanout-"+beforeEnvelopes[:12]+"-"+runtime.Version())
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	src, err := os.MkdirTemp(dir, "src-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(src)
	archive := exec.Command("sh", "-c", "git archive "+beforeEnvelopes+" | tar -x -C "+src)
	archive.Dir = ".."
	if out, err := archive.CombinedOutput(); err != nil {
		return "", fmt.Errorf("git archive %s (the test needs this repository's git history): %w\n%s", beforeEnvelopes, err, out)
	}
	build := exec.Command("go", "build", "-o", filepath.Join(src, "fanout"), ".")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build of %s: %w\n%s", beforeEnvelopes, err, out)
	}
	// Renamed into place whole: a run that stops half-way leaves no binary.
	if err := os.Rename(filepath.Join(src, "fanout"), bin); err != nil {
		return "", err
	}
	return bin, nil
})

// TestARollingUpgradeFromBeforeEnvelopesForwardsNoEnvelopeAndLosesNothing:
// an instance of the version before envelopes and one of this version run
// side by side on one Redis, as in a rolling upgrade, while a publisher of
// this version publishes with the script. The old instance drops the
// envelopes as invalid payloads (counted): no client of it ever gets one.
// The new instance's clients get each event, byte for byte or with its id.
// When the old instance stops, its fanout.v1 client resumes on the new one
// and gets the events the old one dropped.
func TestARollingUpgradeFromBeforeEnvelopesForwardsNoEnvelopeAndLosesNothing(t *testing.T) {
	skipShort(t)
	t.Parallel()
	bin, err := buildPrevious()
	if err != nil {
		t.Fatal(err)
	}
	r := testproc.StartRedis(t)
	rdb := redisClient(t, r.Addr())
	cmd := exec.Command(bin)
	port, adminPort := testproc.FreePort(t), testproc.FreePort(t)
	cmd.Env = append(os.Environ(), fanoutEnv(r.Addr(), port, adminPort)...)
	old := startFanoutCmd(t, cmd, port, adminPort)
	old.waitReady()
	cur := startFanout(t, r.Addr())
	curStarted := time.Now()

	const user = "upgrading"
	q := url.Values{"username": {user}}
	oldV1 := openHistory(t, historyTransports()[0], old.base, q, "")
	curV1 := openHistory(t, historyTransports()[0], cur.base, q, "")
	oldPlain, curPlain := dialWS(t, old.wsURL+"?username="+user, nil), dialWS(t, cur.wsURL+"?username="+user, nil)
	testproc.WaitFor(t, 5*time.Second, "connections registered", func() string {
		if n, m := old.connections(user), cur.connections(user); n != 2 || m != 2 {
			return fmt.Sprintf("old %d, new %d connections", n, m)
		}
		return ""
	})

	// A plain PUBLISH reaches everyone, with one id.
	first := event(user, 0)
	publish(t, rdb, user, first)
	f0 := nextFrame(t, oldV1)
	if g := nextFrame(t, curV1); f0.Data != first || g != f0 {
		t.Fatalf("plain event: old instance %s, new %s, want %q with one id", f0, g, first)
	}
	for _, c := range []*websocket.Conn{oldPlain, curPlain} {
		if got := readText(t, c, 5*time.Second); got != first {
			t.Fatalf("plain client got %q, want %q", got, first)
		}
	}

	// Published with this version's script: in envelopes.
	pub := history.NewPublisher(rdb, history.Retention{})
	payloads := []string{event(user, 1), event(user, 2)}
	var ids []string
	for _, p := range payloads {
		id, err := pub.Publish(t.Context(), user, []byte(p))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for i, p := range payloads {
		if f := nextFrame(t, curV1); f.Control != "" || f.ID != ids[i] || f.Data != p {
			t.Fatalf("new instance: event %d is %s, want %s %q", i, f, ids[i], p)
		}
		if got := readText(t, curPlain, 5*time.Second); got != p {
			t.Fatalf("new instance's plain client got %q, want %q", got, p)
		}
	}
	testproc.WaitFor(t, 5*time.Second, "the old instance dropped both envelopes", func() string {
		if n := old.counter("messages_invalid"); n != 2 {
			return fmt.Sprintf("messages_invalid %d", n)
		}
		return ""
	})
	// Dropped before any client: nothing is on its way to them.
	// (The last read of oldPlain: a read that times out ends a gorilla
	// connection.)
	_ = oldPlain.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, got, err := oldPlain.ReadMessage(); err == nil {
		t.Fatalf("the old instance forwarded %q to a plain client", got)
	}
	if f, err := oldV1.NextWithin(300 * time.Millisecond); err == nil {
		t.Fatalf("the old instance forwarded %s to a fanout.v1 client", f)
	}

	// The earlier version does not read the sole recorder's key, but its
	// pub/sub connection counts as another instance: beside it, this one
	// has never appended alone (two checks, 1 s apart).
	time.Sleep(time.Until(curStarted.Add(2500 * time.Millisecond)))
	if cur.stats().Subscription.SoleRecorder || rdb.Exists(t.Context(), history.SoloKey).Val() != 0 {
		t.Fatal("the new instance appends alone beside an instance of the earlier version")
	}

	// The old instance is upgraded: its client resumes on the new one.
	old.sigterm()
	resumed := openHistory(t, historyTransports()[0], cur.base, q, f0.ID)
	expectEvents(t, resumed, []history.Event{{ID: ids[0], Data: payloads[0]}, {ID: ids[1], Data: payloads[1]}})

	// Alone now, it appends alone, and its clients get the ids the
	// history holds.
	testproc.WaitFor(t, 5*time.Second, "the new instance appending alone", func() string {
		if !cur.stats().Subscription.SoleRecorder || !strings.Contains(cur.logs(), "appending events without looking them up") {
			return "not yet"
		}
		return ""
	})
	last := event(user, 1)
	publish(t, rdb, user, last)
	got := nextFrame(t, resumed)
	entries := streamEntries(t, rdb, user)
	if n := len(entries); n == 0 || got.Data != last || got.ID != entries[n-1].ID || entries[n-1].Data != last {
		t.Fatalf("after the upgrade: %s, want %q with the id of the history's last entry %v", got, last, entries[len(entries)-1])
	}
}
