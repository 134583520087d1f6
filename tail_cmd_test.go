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
	return runTail(context.Background(), args, func(string) string { return "" }, nil, stdout, stderr)
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
	if !strings.Contains(stderr.String(), "HTTP 400: missing username") {
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
