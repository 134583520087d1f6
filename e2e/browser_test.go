package e2e

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"fanout/internal/testproc"
)

// browserPage is the README's browser example, reporting what happens in
// the page title so that the test can watch it.
const browserPage = `<!doctype html>
<title>loading</title>
<script>
const ws = new WebSocket(%q);
ws.onopen = () => { document.title = 'open'; };
ws.onmessage = (event) => {
  const data = JSON.parse(event.data);
  document.title = 'event ' + data.type + ' ' + data.message;
};
ws.onclose = (event) => { document.title = 'closed ' + event.code; };
</script>
`

// openInChromium opens a page served from its own origin that connects to
// wsURL, in real headless Chromium, and returns the process, which exits 0
// once the page title equals wantTitle.
func openInChromium(t *testing.T, wsURL, wantTitle string) (*testproc.Process, string) {
	t.Helper()
	needChromium(t)
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, browserPage, wsURL)
	}))
	t.Cleanup(page.Close)
	cmd := e2eCommand(t, "open-page.mjs", page.URL, wantTitle, "30000")
	return testproc.Start(t, cmd), page.URL
}

func TestBrowserOnAnotherOriginReceivesEventsWithTheDefaultConfig(t *testing.T) {
	skipShort(t)
	t.Parallel()
	td := startDaemon(t, testproc.StartRedis(t), map[string]string{"LOG_LEVEL": "info"})
	td.waitReady()
	browser, _ := openInChromium(t, td.wsURL+"?username=test-user", "event test hello")
	testproc.Eventually(t, 30*time.Second, "browser connected", func() bool { return td.connectionCount("test-user") == 1 })
	td.publish("test-user", `{"type":"test","message":"hello"}`)
	browser.WaitExit(t, 30*time.Second)
}

func TestBrowserOnAnOriginOutsideAllowedOriginsIsRefused(t *testing.T) {
	skipShort(t)
	t.Parallel()
	td := startDaemon(t, testproc.StartRedis(t), map[string]string{"ALLOWED_ORIGINS": "https://app.example.com"})
	browser, pageURL := openInChromium(t, td.wsURL+"?username=test-user", "closed 1006")
	browser.WaitExit(t, 30*time.Second)
	want := fmt.Sprintf(`origin %q is not in ALLOWED_ORIGINS`, pageURL)
	if !strings.Contains(td.Output(), strings.ReplaceAll(want, `"`, `\"`)) {
		t.Fatalf("daemon did not log the refused origin %s:\n%s", pageURL, td.Output())
	}
}

// readmeRefreshSnippet returns the README's token-refresh example, wired to
// the test daemon and reporting each event's n in the page title.
func readmeRefreshSnippet(t *testing.T, wsURL string) string {
	t.Helper()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const marker = "// fanout: connect with a fresh token"
	_, after, ok := strings.Cut(string(readme), "```javascript\n"+marker)
	snippet, _, ok2 := strings.Cut(marker+after, "```")
	call := `connectFanout('wss://events.example.com/ws', '/api/fanout-token', (data) => console.log('Event:', data));`
	if !ok || !ok2 || !strings.Contains(snippet, call) {
		t.Fatal("README.md has no token-refresh snippet ending with the connectFanout call")
	}
	return strings.Replace(snippet, call,
		fmt.Sprintf(`connectFanout(%q, '/api/fanout-token', (data) => { document.title = 'event ' + data.n; });`, wsURL), 1)
}

func TestBrowserReconnectsWithAFreshTokenWhenItExpires(t *testing.T) {
	skipShort(t)
	t.Parallel()
	td := startDaemon(t, testproc.StartRedis(t), jwtEnv(map[string]string{"LOG_LEVEL": "info"}))
	td.waitReady()
	var tokensIssued atomic.Int64
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/fanout-token" {
			tokensIssued.Add(1)
			// Expires within 1 to 2 seconds (exp has whole seconds).
			c := claims("alice", 0)
			c["exp"] = time.Now().Add(2 * time.Second).Unix()
			fmt.Fprint(w, mint(t, jwt.SigningMethodHS256, []byte(testSecret), c, ""))
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, "<!doctype html>\n<title>loading</title>\n<script>\n%s</script>\n", readmeRefreshSnippet(t, td.wsURL))
	}))
	t.Cleanup(page.Close)
	cmd := e2eCommand(t, "open-page.mjs", page.URL, "event after-expiry", "30000")
	browser := testproc.Start(t, cmd)

	// Events reach the first connection; then its token expires twice.
	testproc.Eventually(t, 30*time.Second, "browser connected", func() bool { return td.connectionCount("alice") == 1 })
	testproc.Eventually(t, 15*time.Second, "two expiries", func() bool {
		td.publish("alice", `{"n":"before"}`)
		time.Sleep(50 * time.Millisecond)
		return td.counter("expired_disconnects") >= 2
	})
	// Only a connection opened with a fresh token can receive this one.
	deadline := time.After(30 * time.Second)
	for {
		td.publish("alice", `{"n":"after-expiry"}`)
		select {
		case <-deadline:
			t.Fatalf("the page never showed an event sent after the expiries; it printed:\n%s", browser.Output())
		case <-browser.Done():
			browser.WaitExit(t, time.Second)
			if n := tokensIssued.Load(); n < 3 {
				t.Fatalf("the page fetched %d tokens, want at least 3", n)
			}
			if logs := td.Output(); !strings.Contains(logs, `msg="Closing client" username=alice remote=127.0.0.1 code=4001 reason="token expired"`) {
				t.Fatalf("expiry not logged:\n%s", logs)
			}
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func TestEventSourceMissesNothingAcrossADaemonRestart(t *testing.T) {
	skipShort(t)
	t.Parallel()
	// A plain EventSource, no code for resuming: on its own reconnects it
	// sends Last-Event-ID, which must win over the URL's history=2.
	h, _ := resumeAcrossRestart(t, "s", func(h *clientHarness, td *testDaemon) {
		h.send(map[string]any{"cmd": "eventsource", "name": "s", "url": td.baseURL + "/events?username=alice&history=2"})
	})
	// One stream before the restart, one after: live events must not
	// break a stream (resuming would hide it, 2 s late each time).
	if n := countLines(h.p.Output(), "status s open"); n != 2 || !strings.Contains(h.p.Output(), "status s error readyState=0") {
		t.Fatalf("the EventSource opened %d streams, want 2 (one before the restart, one after):\n%s", n, h.p.Output())
	}
	h.exit()
}

// readmeResumeSnippet returns the README's fanout.v1 reconnect loop, wired
// to wsURL, reporting each event as the client harness does for name.
func readmeResumeSnippet(t *testing.T, wsURL, name string) string {
	t.Helper()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const marker = "// fanout.v1: reconnect with backoff, resume after the last event id."
	_, after, ok := strings.Cut(string(readme), "```javascript\n"+marker)
	snippet, _, ok2 := strings.Cut(marker+after, "```")
	call := `resumeFanout('wss://events.example.com/ws', 'alice', (event, id) => console.log(id, event), { history: 20 });`
	if !ok || !ok2 || !strings.Contains(snippet, call) {
		t.Fatal("README.md has no fanout.v1 snippet ending with the resumeFanout call")
	}
	return strings.Replace(snippet, call, fmt.Sprintf(
		`resumeFanout(%q, 'alice', (event, id) => window.report('event %s ' + JSON.stringify(event) + ' id=' + id), { history: 2, onResync: (reason) => window.report('resync %[2]s reason=' + reason) });`,
		wsURL, name), 1)
}

func TestREADMEResumeLoopMissesNothingAcrossADaemonRestart(t *testing.T) {
	skipShort(t)
	t.Parallel()
	h, _ := resumeAcrossRestart(t, "w", func(h *clientHarness, td *testDaemon) {
		h.send(map[string]any{"cmd": "script", "code": readmeResumeSnippet(t, td.wsURL, "w")})
	})
	h.exit()
}
