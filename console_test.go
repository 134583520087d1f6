package main

import (
	"net/http"
	"strings"
	"testing"
)

// The console (/) and operator (/admin/) pages as HTTP serves them; the
// pages in Chromium are e2e's (e2e/console_test.go).

func TestConsoleOffServesNoPageButStillTheClient(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{"CONSOLE": "off"})
	for _, path := range []string{"/", "/console.js", "/console.css"} {
		if status, _, err := get(td.baseURL + path); err != nil || status != http.StatusNotFound {
			t.Fatalf("CONSOLE=off: GET %s: %d %v, want 404", path, status, err)
		}
	}
	resp, body := adminGet(t, td.baseURL+"/fanout-client.js", "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "export function connect(") {
		t.Fatalf("CONSOLE=off: GET /fanout-client.js: %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/javascript") {
		t.Fatalf("fanout-client.js Content-Type %q", ct)
	}
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "*" {
		t.Fatalf("fanout-client.js Access-Control-Allow-Origin %q, want * (pages on any origin import it)", got)
	}
}

func TestConsoleAndOperatorPagesSendAStrictContentSecurityPolicy(t *testing.T) {
	td := startDaemon(t, startRedis(t), nil)
	for _, page := range []struct{ url, connect string }{
		{td.baseURL + "/", "connect-src 'self' ws: wss:"},
		{td.adminURL + "/admin/", "connect-src 'self';"},
	} {
		resp, body := adminGet(t, page.url, "")
		csp := resp.Header.Get("Content-Security-Policy")
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, "<title>fanout ") {
			t.Fatalf("GET %s: %d", page.url, resp.StatusCode)
		}
		for _, want := range []string{"default-src 'self'", "script-src 'self';", "style-src 'self';", page.connect, "frame-ancestors 'none'"} {
			if !strings.Contains(csp, want) {
				t.Fatalf("GET %s: Content-Security-Policy %q lacks %q", page.url, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe-") {
			t.Fatalf("GET %s: Content-Security-Policy %q allows unsafe sources", page.url, csp)
		}
		// Nothing inline: the policy would block it.
		if strings.Contains(body, "<script>") || strings.Contains(body, "style=") || strings.Contains(body, "<style") {
			t.Fatalf("GET %s: the page has inline script or style", page.url)
		}
	}
	// The pages' assets; the operator page's need no ADMIN_TOKEN (checked
	// with a token in TestOperatorPageShowsConnectionsAndThroughput).
	for _, url := range []string{td.baseURL + "/console.js", td.baseURL + "/console.css", td.adminURL + "/admin/admin.js", td.adminURL + "/admin/admin.css"} {
		if status, _, err := get(url); err != nil || status != http.StatusOK {
			t.Fatalf("GET %s: %d %v", url, status, err)
		}
	}
}
