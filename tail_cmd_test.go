package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
)

// tail runs `fanout tail args…` with no FANOUT_TOKEN in its environment.
func tail(args []string, stdout, stderr *bytes.Buffer) int {
	return runTail(context.Background(), args, func(string) (string, bool) { return "", false }, nil, stdout, stderr)
}

func TestTailPrintsEachEventOnItsOwnLine(t *testing.T) {
	var gotUser string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotUser = r.URL.Query().Get("username")
		conn, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		for _, msg := range []string{`{"type":"a"}`, `{"type":"b"}`} {
			_ = conn.WriteMessage(websocket.TextMessage, []byte(msg))
		}
		_, _, _ = conn.ReadMessage() // until the client goes
	}))
	defer srv.Close()

	var stdout, stderr bytes.Buffer
	code := tail([]string{"-url", "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws", "-username", "a.b+c", "-count", "2"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if stdout.String() != "{\"type\":\"a\"}\n{\"type\":\"b\"}\n" {
		t.Fatalf("stdout %q", stdout.String())
	}
	if gotUser != "a.b+c" {
		t.Fatalf("server saw username %q: the query was not escaped", gotUser)
	}
}

func TestTailRefusedConnectionPrintsTheServersReason(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "missing username", http.StatusBadRequest)
	}))
	defer srv.Close()
	var stdout, stderr bytes.Buffer
	if code := tail([]string{"-url", "ws" + strings.TrimPrefix(srv.URL, "http")}, &stdout, &stderr); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if !strings.Contains(stderr.String(), "HTTP 400: missing username") || strings.Count(stderr.String(), "\n") != 1 {
		t.Fatalf("stderr %q", stderr.String())
	}
}

func TestTailTokenIsSentAsBearerAndTheUsernameLeftToIt(t *testing.T) {
	var gotAuth string
	var hasUser bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth, hasUser = r.Header.Get("Authorization"), r.URL.Query().Has("username")
		http.Error(w, "invalid token: expired", http.StatusUnauthorized)
	}))
	defer srv.Close()
	var stdout, stderr bytes.Buffer
	if code := tail([]string{"-url", "ws" + strings.TrimPrefix(srv.URL, "http"), "-token", "abc.def.ghi"}, &stdout, &stderr); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if gotAuth != "Bearer abc.def.ghi" || hasUser {
		t.Fatalf("server saw Authorization %q, username given: %v", gotAuth, hasUser)
	}
	if !strings.Contains(stderr.String(), "HTTP 401: invalid token: expired") || strings.Contains(stderr.String(), "abc.def.ghi") {
		t.Fatalf("stderr %q", stderr.String())
	}
}

func TestTailTakesDoubleDashFlagsAndTheTokenFromFANOUT_TOKEN(t *testing.T) {
	var gotAuth string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth = r.Header.Get("Authorization")
		conn, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		_ = conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"a"}`))
		_, _, _ = conn.ReadMessage() // until the client goes
	}))
	defer srv.Close()
	var stdout, stderr bytes.Buffer
	env := envOf(map[string]string{"FANOUT_TOKEN": "from.the.env"})
	code := runTail(context.Background(), []string{"--url", "ws" + strings.TrimPrefix(srv.URL, "http"), "--count=1"}, env, nil, &stdout, &stderr)
	if code != 0 || stdout.String() != "{\"type\":\"a\"}\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	if gotAuth != "Bearer from.the.env" {
		t.Fatalf("server saw Authorization %q, want FANOUT_TOKEN's", gotAuth)
	}
}

func TestTailTimeoutWithoutEventsIsExit1WithOneLine(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		_, _, _ = conn.ReadMessage() // until the client goes
	}))
	defer srv.Close()
	var stdout, stderr bytes.Buffer
	if code := tail([]string{"--url", "ws" + strings.TrimPrefix(srv.URL, "http"), "--timeout", "100ms"}, &stdout, &stderr); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "connected") || !strings.Contains(lines[1], "timeout") {
		t.Fatalf("stderr %q, want the connected line and one line saying it timed out", stderr.String())
	}
}
