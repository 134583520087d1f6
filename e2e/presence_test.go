package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"fanout/internal/testproc"
	"fanout/presence"
)

// presenceWatch collects the transitions published on presence's default
// channel, in order, from the moment it is made.
type presenceWatch struct {
	ps   *redis.PubSub
	done chan struct{}
	mu   sync.Mutex
	seen []transition
}

type transition struct {
	Username string `json:"username"`
	Online   bool   `json:"online"`
	at       time.Time
}

func watchPresence(t testing.TB, rdb *redis.Client) *presenceWatch {
	t.Helper()
	w := &presenceWatch{ps: rdb.Subscribe(context.Background(), presence.DefaultChannel), done: make(chan struct{})}
	if _, err := w.ps.Receive(t.Context()); err != nil {
		t.Fatal(err)
	}
	ch := w.ps.Channel()
	go func() {
		defer close(w.done)
		for m := range ch {
			var tr transition
			if err := json.Unmarshal([]byte(m.Payload), &tr); err != nil {
				t.Errorf("presence transition %q: %v", m.Payload, err)
				continue
			}
			tr.at = time.Now()
			w.mu.Lock()
			w.seen = append(w.seen, tr)
			w.mu.Unlock()
		}
	}()
	t.Cleanup(w.stop)
	return w
}

// stop ends the watch (its goroutine returns once the channel closes).
func (w *presenceWatch) stop() {
	_ = w.ps.Close()
	<-w.done
}

// transitions returns what was seen so far.
func (w *presenceWatch) transitions() []transition {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.seen)
}

// count returns how many online and offline transitions user had.
func (w *presenceWatch) count(user string) (online, offline int) {
	for _, tr := range w.transitions() {
		if tr.Username != user {
			continue
		}
		if tr.Online {
			online++
		} else {
			offline++
		}
	}
	return online, offline
}

// openSSE opens /events for user on base and returns the response, whose
// body is closed at cleanup.
func openSSE(t testing.TB, base, user string) *http.Response {
	t.Helper()
	resp, err := http.Get(base + "/events?username=" + user)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("open SSE for %s: %v %v", user, resp, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// presenceCommand runs `fanout presence users…` against the Redis at addr.
func presenceCommand(t *testing.T, redisAddr string, users ...string) map[string]presence.Status {
	t.Helper()
	host, port, _ := net.SplitHostPort(redisAddr)
	cmd := exec.Command(fanoutBinary(t), append([]string{"presence"}, users...)...)
	cmd.Env = append(os.Environ(), "REDIS_HOST="+host, "REDIS_PORT="+port)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("fanout presence: %v", err)
	}
	got := map[string]presence.Status{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		var s presence.Status
		if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
			t.Fatalf("fanout presence printed %q: %v", sc.Text(), err)
		}
		got[s.Username] = s
	}
	if len(got) != len(users) {
		t.Fatalf("fanout presence printed %q for %v", out, users)
	}
	return got
}

// TestPresenceAcross3InstancesWithUsersMovingAndAKill9: 3 instances on one
// Redis; users on one instance, on two (WebSocket and SSE), and one that
// moves to another instance like a page reload; one leaves; then an
// instance is killed with SIGKILL. Each transition is published once, the
// move publishes nothing, and the killed instance's users connected nowhere
// else go offline within PRESENCE_TTL + PRESENCE_GRACE.
func TestPresenceAcross3InstancesWithUsersMovingAndAKill9(t *testing.T) {
	skipShort(t)
	t.Parallel()
	// The grace must outlast a move (300 ms here) plus a tick (750 ms at
	// this TTL), or a move could be announced offline.
	const ttl, grace = 3 * time.Second, time.Second
	r := testproc.StartRedis(t)
	env := []string{"PRESENCE_TTL=" + ttl.String(), "PRESENCE_GRACE=" + grace.String()}
	a, b, c := startFanout(t, r.Addr(), env...), startFanout(t, r.Addr(), env...), startFanout(t, r.Addr(), env...)
	watch := watchPresence(t, r.Client())

	// solo on a; both on a (WebSocket) and b (SSE); leaver on c; mover on
	// a, then on b a moment later.
	solo := dialWS(t, a.wsURL+"?username=solo", nil)
	dialWS(t, a.wsURL+"?username=both", nil)
	openSSE(t, b.base, "both")
	leaver := dialWS(t, c.wsURL+"?username=leaver", nil)
	mover := dialWS(t, a.wsURL+"?username=mover", nil)
	dialWS(t, c.wsURL+"?username=alice", nil)
	users := []string{"solo", "both", "leaver", "mover", "alice"}
	testproc.Eventually(t, 5*time.Second, "every user announced online", func() bool {
		for _, u := range users {
			if on, _ := watch.count(u); on != 1 {
				return false
			}
		}
		return true
	})
	st := presenceCommand(t, r.Addr(), "solo", "both", "nobody")
	if st["solo"] != (presence.Status{Username: "solo", Online: true, Connections: 1}) ||
		st["both"] != (presence.Status{Username: "both", Online: true, Connections: 2}) ||
		st["nobody"] != (presence.Status{Username: "nobody"}) {
		t.Fatalf("fanout presence: %+v", st)
	}
	checkPresenceRecipes(t, r.Addr())

	mover.Close()
	time.Sleep(300 * time.Millisecond)
	dialWS(t, b.wsURL+"?username=mover", nil)
	leaver.Close()
	left := time.Now()
	testproc.Eventually(t, 5*time.Second, "leaver offline", func() bool { _, off := watch.count("leaver"); return off == 1 })
	t.Logf("leaver offline %v after closing (grace %v)", time.Since(left).Round(10*time.Millisecond), grace)

	_ = solo // its instance dies under it
	a.Kill()
	killed := time.Now()
	testproc.Eventually(t, ttl+grace+3*time.Second, "solo offline after its instance was killed", func() bool {
		_, off := watch.count("solo")
		return off == 1
	})
	took := time.Since(killed)
	t.Logf("solo offline %v after SIGKILL (PRESENCE_TTL %v + PRESENCE_GRACE %v)", took.Round(10*time.Millisecond), ttl, grace)
	// The bound, with half a second for scheduling: the instances' ticks
	// and the subscriber's delivery run on a busy machine (the race
	// detector, tests in parallel).
	if took > ttl+grace+500*time.Millisecond {
		t.Errorf("solo offline %v after its instance died, want within PRESENCE_TTL + PRESENCE_GRACE", took)
	}
	// Nothing more can come once nobody is pending offline and the dead
	// instance is out of presence.
	testproc.Eventually(t, ttl+grace+3*time.Second, "presence settled", func() bool {
		pending, err1 := r.Client().ZCard(context.Background(), presence.PendingKey).Result()
		live, err2 := r.Client().ZCard(context.Background(), presence.InstancesKey).Result()
		return err1 == nil && err2 == nil && pending == 0 && live == 2
	})
	time.Sleep(300 * time.Millisecond) // a transition published just before would have arrived
	want := map[string][2]int{"solo": {1, 1}, "both": {1, 0}, "leaver": {1, 1}, "mover": {1, 0}, "alice": {1, 0}}
	for u, w := range want {
		if on, off := watch.count(u); on != w[0] || off != w[1] {
			t.Errorf("%s: %d online, %d offline; want %d and %d (all: %+v)", u, on, off, w[0], w[1], watch.transitions())
		}
	}
	st = presenceCommand(t, r.Addr(), "solo", "both", "mover")
	if st["solo"].Online || st["both"].Connections != 1 || st["mover"].Connections != 1 {
		t.Fatalf("after the kill: %+v", st)
	}
}

// checkPresenceRecipes runs docs/presence.md's redis-cli and Python recipes
// as they are written against the Redis at addr, where alice has one
// connection and bob none.
func checkPresenceRecipes(t *testing.T, addr string) {
	t.Helper()
	page, err := os.ReadFile("../docs/presence.md")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	_, port, _ := net.SplitHostPort(addr)
	run := func(name string, cmd *exec.Cmd) string {
		t.Helper()
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "REDIS_HOST=127.0.0.1", "REDIS_PORT="+port, "PATH="+filepath.Dir(fanoutBinary(t))+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, out)
		}
		return string(out)
	}
	// The shell block: save the script, then the redis-cli call, on
	// this test's Redis.
	var shell []string
	for _, line := range strings.Split(codeBlock(t, string(page), "bash", "redis-cli EVAL"), "\n") {
		if line != "" && !strings.HasPrefix(line, "#") {
			shell = append(shell, strings.Replace(strings.Replace(line, "./fanout", "fanout", 1), "redis-cli ", "redis-cli -p "+port+" ", 1))
		}
	}
	if out := run("redis-cli recipe", exec.Command("bash", "-ec", strings.Join(shell, "\n"))); out != "1\n0\n" {
		t.Fatalf("redis-cli recipe printed %q, want alice's 1 and bob's 0", out)
	}
	if err := exec.Command("/usr/bin/python3", "-c", "import redis").Run(); err != nil {
		t.Fatalf("the Python recipe needs Debian's python3 with python3-redis (./test.sh installs it): %v", err)
	}
	py := filepath.Join(dir, "recipe.py")
	if err := os.WriteFile(py, []byte(codeBlock(t, string(page), "python", "register_script")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := run("Python recipe", exec.Command("/usr/bin/python3", py)); out != "{'alice': 1, 'bob': 0}\n" {
		t.Fatalf("Python recipe printed %q, want alice 1 and bob 0", out)
	}
}

// codeBlock returns the one code block in language lang of page that
// contains marker.
func codeBlock(t *testing.T, page, lang, marker string) string {
	t.Helper()
	var found []string
	for _, m := range regexp.MustCompile("(?s)```"+lang+"\n(.*?)```").FindAllStringSubmatch(page, -1) {
		if strings.Contains(m[1], marker) {
			found = append(found, m[1])
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d %s blocks with %q, want 1", len(found), lang, marker)
	}
	return found[0]
}

// TestTheEmailRecipeWaitsForAReceipt runs docs/presence.md's Python recipe
// as written: it publishes workflow_completed with fanout publish and waits
// for alice's receipt; a page of alice that acknowledges what it shows
// makes it say she saw it, and without one it sends the e-mail.
func TestTheEmailRecipeWaitsForAReceipt(t *testing.T) {
	skipShort(t)
	t.Parallel()
	if err := exec.Command("/usr/bin/python3", "-c", "import redis").Run(); err != nil {
		t.Fatalf("the Python recipe needs Debian's python3 with python3-redis (./test.sh installs it): %v", err)
	}
	r := testproc.StartRedis(t)
	f := startFanout(t, r.Addr())
	page, err := os.ReadFile("../docs/presence.md")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	recipe := filepath.Join(dir, "recipe.py")
	if err := os.WriteFile(recipe, []byte(codeBlock(t, string(page), "python", "WAIT_SECONDS")), 0o644); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(r.Addr())
	run := func(wait string) string {
		t.Helper()
		cmd := exec.Command("/usr/bin/python3", recipe)
		cmd.Env = append(os.Environ(), "REDIS_HOST=127.0.0.1", "REDIS_PORT="+port, "WAIT_SECONDS="+wait,
			"PATH="+filepath.Dir(fanoutBinary(t))+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("recipe: %v\n%s", err, out)
		}
		return string(out)
	}

	// Nobody watches alice: the e-mail.
	if out := run("1"); !strings.HasPrefix(out, "alice has not seen ") || !strings.HasSuffix(out, " in time: sending the e-mail\n") {
		t.Fatalf("with no page: %q", out)
	}
	// alice's page acknowledges each event it shows.
	d := websocket.Dialer{Subprotocols: []string{"fanout.v1"}}
	conn, _, err := d.Dial(f.wsURL+"?username=alice", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			_, data, err := conn.ReadMessage()
			if err != nil {
				return
			}
			var frame struct {
				ID string `json:"id"`
			}
			if json.Unmarshal(data, &frame) == nil && frame.ID != "" {
				_ = conn.WriteMessage(websocket.TextMessage, []byte(`{"ack":"`+frame.ID+`"}`))
			}
		}
	}()
	defer func() { conn.Close(); <-done }()
	testproc.Eventually(t, 5*time.Second, "alice connected", func() bool { return f.connections("alice") == 1 })
	out := run("10")
	if !strings.HasPrefix(out, "alice saw ") {
		t.Fatalf("with a page that acknowledges: %q", out)
	}
}
