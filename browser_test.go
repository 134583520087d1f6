package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
func openInChromium(t *testing.T, wsURL, wantTitle string) (*daemonProcess, string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join("e2e", "node_modules", "playwright-core")); err != nil {
		t.Fatal("playwright-core is not installed: run ./test.sh, which installs it with chromium")
	}
	if _, err := os.Stat("/usr/bin/chromium"); err != nil {
		t.Fatal("chromium is not installed: run ./test.sh, which installs it")
	}
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, browserPage, wsURL)
	}))
	t.Cleanup(page.Close)
	cmd := exec.Command("node", "open-page.mjs", page.URL, wantTitle, "30000")
	cmd.Dir = "e2e"
	return startProcess(t, cmd), page.URL
}

func TestBrowserOnAnotherOriginReceivesEventsWithTheDefaultConfig(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{"LOG_LEVEL": "info"})
	td.waitReady()
	browser, _ := openInChromium(t, td.wsURL+"?username=test-user", "event test hello")
	eventually(t, 30*time.Second, "browser connected", func() bool { return td.d.hub.connectionCount("test-user") == 1 })
	td.publish("test-user", `{"type":"test","message":"hello"}`)
	browser.waitExit(t, 30*time.Second)
}

func TestBrowserOnAnOriginOutsideAllowedOriginsIsRefused(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{"ALLOWED_ORIGINS": "https://app.example.com"})
	browser, pageURL := openInChromium(t, td.wsURL+"?username=test-user", "closed 1006")
	browser.waitExit(t, 30*time.Second)
	want := fmt.Sprintf(`origin %q is not in ALLOWED_ORIGINS`, pageURL)
	if !strings.Contains(td.logs.String(), strings.ReplaceAll(want, `"`, `\"`)) {
		t.Fatalf("daemon did not log the refused origin %s:\n%s", pageURL, td.logs.String())
	}
}
