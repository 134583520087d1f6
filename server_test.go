package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"fanout/history"
)

func TestDeliveryReachesEveryConnectionOfUserInOrderAndNoOtherUser(t *testing.T) {
	td := startDaemon(t, startRedis(t), nil)
	td.waitReady()

	alice := []*websocket.Conn{td.dial("alice"), td.dial("alice")}
	others := map[string]*websocket.Conn{}
	for _, u := range []string{"alice2", "ALICE", "alic", "bob"} {
		others[u] = td.dial(u)
	}

	// Channels that look like alice's but are not.
	for _, u := range []string{"alice2", "ALICE", "alic", "alice:x", "alice*", "bob"} {
		td.publish(u, event(u, 0))
	}
	const n = 50
	for i := 1; i <= n; i++ {
		td.publish("alice", event("alice", i))
	}
	td.publish("alice", `{"type":"end"}`)

	for ci, conn := range alice {
		for i := 1; i <= n; i++ {
			if got, want := readText(t, conn, 5*time.Second), event("alice", i); got != want {
				t.Fatalf("alice conn %d message %d = %s, want %s", ci, i, got, want)
			}
		}
		// Publish order is kept, so anything leaked would have come before.
		if got := readText(t, conn, 5*time.Second); got != `{"type":"end"}` {
			t.Fatalf("alice conn %d got %s, want the end marker", ci, got)
		}
	}
	for u, conn := range others {
		if got, want := readText(t, conn, 5*time.Second), event(u, 0); got != want {
			t.Fatalf("%s got %s, want %s", u, got, want)
		}
		td.publish(u, `{"type":"end"}`)
		if got := readText(t, conn, 5*time.Second); got != `{"type":"end"}` {
			t.Fatalf("%s got %s, want only its own events", u, got)
		}
	}
}

func TestPublishedBytesArriveUnchangedAsOneTextFrame(t *testing.T) {
	td := startDaemon(t, startRedis(t), nil)
	td.waitReady()
	conn := td.dial("test-user")

	payloads := []string{
		`{"type":"test","message":"hello"}`,
		"  {\n  \"type\" : \"workflow_started\",\t\"nodes\": 2 }\n",
		`{"type":"node_completed","result_ref":"sha256:…","emoji":"🚀","esc":"\u00e9\"\\"}`,
		`[1,2,3]`,
		`"just a string"`,
		`{"big":"` + strings.Repeat("x", 200_000) + `"}`,
	}
	for _, p := range payloads {
		td.publish("test-user", p)
	}
	for i, p := range payloads {
		if got := readText(t, conn, 5*time.Second); got != p {
			t.Fatalf("payload %d changed in transit:\n got %.80q\nwant %.80q", i, got, p)
		}
	}
}

func TestUsernameIsValidatedBeforeUpgrade(t *testing.T) {
	td := startDaemon(t, startRedis(t), nil)

	cases := []struct {
		name  string
		query string
		want  string
	}{
		{"missing", "", "missing username"},
		{"empty", "?username=", "missing username"},
		{"too long", "?username=" + strings.Repeat("a", 129), "129 bytes"},
		{"star", "?username=ali*", `"*"`},
		{"question mark", "?username=ali%3F", `"?"`},
		{"bracket", "?username=ali%5Bce%5D", `"["`},
		{"colon", "?username=alice:x", `":"`},
		{"space", "?username=a%20b", `" "`},
		{"plus decodes to space", "?username=a+b", `" "`},
		{"non-ascii", "?username=%C3%A9", `"\xc3"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, td.baseURL+"/ws"+tc.query, nil)
			// A real upgrade request: only the username is wrong.
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", "websocket")
			req.Header.Set("Sec-WebSocket-Version", "13")
			req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("status %d, want 400", resp.StatusCode)
			}
			line := strings.TrimSuffix(string(body), "\n")
			if strings.Contains(line, "\n") || !strings.Contains(line, tc.want) {
				t.Fatalf("body %q: want one line mentioning %s", body, tc.want)
			}
		})
	}

	// A valid username on a request that is not a WebSocket handshake.
	status, body, err := get(td.baseURL + "/ws?username=alice")
	if err != nil {
		t.Fatal(err)
	}
	if status != http.StatusBadRequest || !strings.Contains(body, "not using the websocket protocol") {
		t.Fatalf("plain GET /ws: %d %q, want 400 saying it is not a WebSocket handshake", status, body)
	}

	for _, ok := range []string{strings.Repeat("a", 128), "a.b_c@d%2Be-f", "org_acme", "sdutt", "test-user"} {
		conn, resp, err := websocket.DefaultDialer.Dial(td.wsURL+"?username="+ok, nil)
		if err != nil {
			t.Fatalf("username %q refused: %v (HTTP %d)", ok, err, resp.StatusCode)
		}
		conn.Close()
	}
}

func TestAMissingUsernameIsRefusedNamingTheEndpointAsked(t *testing.T) {
	r := startRedis(t)
	open := startDaemon(t, r, nil)
	withJWT := startDaemon(t, r, jwtEnv(nil))
	for _, tc := range []struct {
		name string
		url  string
		want string
	}{
		{"WebSocket", open.baseURL + "/ws", "missing username: connect to /ws?username={username}"},
		{"WebSocket, empty", open.baseURL + "/ws?username=", "missing username: connect to /ws?username={username}"},
		{"SSE", open.baseURL + "/events", "missing username: connect to /events?username={username}"},
		{"SSE, empty", open.baseURL + "/events?username=&history=5", "missing username: connect to /events?username={username}"},
		// With a token the username may be left out, not given empty.
		{"SSE with a token", withJWT.baseURL + "/events?username=&token=" + hsToken(t, "alice"), "missing username: connect to /events?username={username}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body, err := get(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			if status != http.StatusBadRequest || body != tc.want+"\n" {
				t.Fatalf("GET %s: %d %q, want 400 %q", tc.url, status, body, tc.want)
			}
		})
	}
}

func TestOriginsDefaultToAnyAndAllowedOriginsNarrows(t *testing.T) {
	r := startRedis(t)
	open := startDaemon(t, r, nil)
	conn := dialWS(t, open.wsURL+"?username=u", http.Header{"Origin": {"http://localhost:3000"}})
	conn.Close()

	narrow := startDaemon(t, r, map[string]string{"ALLOWED_ORIGINS": "https://app.example.com, http://localhost:3000/"})
	for _, origin := range []string{"https://app.example.com", "http://localhost:3000", "HTTP://LOCALHOST:3000"} {
		conn := dialWS(t, narrow.wsURL+"?username=u", http.Header{"Origin": {origin}})
		conn.Close()
	}
	_, resp, err := websocket.DefaultDialer.Dial(narrow.wsURL+"?username=u", http.Header{"Origin": {"https://evil.example.com"}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("foreign origin: err %v, response %v; want 403", err, resp)
	}
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), "ALLOWED_ORIGINS") {
		t.Fatalf("403 body %q does not name ALLOWED_ORIGINS", body)
	}
	// Non-browser clients send no Origin and are not affected.
	conn = dialWS(t, narrow.wsURL+"?username=u", nil)
	conn.Close()
}

func TestHealthAndReadyEndpoints(t *testing.T) {
	td := startDaemon(t, startRedis(t), nil)
	td.waitReady()
	for path, want := range map[string]string{"/health": "OK\n", "/ready": "ready\n"} {
		status, body, err := get(td.baseURL + path)
		if err != nil {
			t.Fatal(err)
		}
		if status != http.StatusOK || body != want {
			t.Fatalf("%s: %d %q, want 200 %q", path, status, body, want)
		}
	}
}

func TestSeedLogLinesAreWritten(t *testing.T) {
	r := startRedis(t)
	td := startDaemon(t, r, nil)
	td.waitReady()
	a := td.dial("test-user")
	b := td.dial("test-user")
	td.publish("test-user", `{"type":"test"}`)
	readText(t, a, 5*time.Second)
	readText(t, b, 5*time.Second)
	a.Close()
	eventually(t, 5*time.Second, "unregister", func() bool { return td.d.hub.connectionCount("test-user") == 1 })
	eventually(t, 5*time.Second, "unregister logged", func() bool {
		return strings.Contains(td.logs.String(), `msg="Client unregistered" username=test-user remaining_for_user=1`)
	})
	logs := td.logs.String()
	for _, want := range []string{
		`msg="New WebSocket connection" username=test-user remote=127.0.0.1`,
		`level=DEBUG msg="Broadcasting to username" username=test-user client_count=2`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s", want)
		}
	}

	// At info level the per-message line is not written.
	quiet := startDaemon(t, r, map[string]string{"LOG_LEVEL": "info"})
	quiet.waitReady()
	c := quiet.dial("test-user")
	quiet.publish("test-user", `{"type":"test"}`)
	readText(t, c, 5*time.Second)
	if strings.Contains(quiet.logs.String(), "Broadcasting") {
		t.Error("per-message line written at info level")
	}
}

func TestClientThatSendsOversizeFrameIsClosed(t *testing.T) {
	t.Parallel()
	td := startDaemon(t, startRedis(t), nil)
	conn := td.dial("u")
	if err := conn.WriteMessage(websocket.TextMessage, []byte(strings.Repeat("x", maxClientMessageSize+1))); err != nil {
		t.Fatal(err)
	}
	err := readUntilError(conn)
	if !websocket.IsCloseError(err, websocket.CloseMessageTooBig) {
		t.Fatalf("read error %v, want close 1009", err)
	}
	eventually(t, 5*time.Second, "unregistered", func() bool { return td.d.hub.connectionCount("u") == 0 })
}

func TestClientThatFloodsMessagesIsClosed(t *testing.T) {
	td := startDaemon(t, startRedis(t), nil)
	conn := td.dial("u")
	for i := 0; i < 200; i++ {
		if err := conn.WriteMessage(websocket.TextMessage, []byte(`{"ping":1}`)); err != nil {
			break // the server may close before all are written
		}
	}
	err := readUntilError(conn)
	if !websocket.IsCloseError(err, websocket.ClosePolicyViolation) {
		t.Fatalf("read error %v, want close 1008", err)
	}
	eventually(t, 5*time.Second, "one flood disconnect counted", func() bool { return td.d.stats.FloodDisconnects.Load() == 1 })
}

func TestFewClientMessagesAreIgnored(t *testing.T) {
	td := startDaemon(t, startRedis(t), nil)
	td.waitReady()
	conn := td.dial("u")
	for i := 0; i < 5; i++ {
		if err := conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping"}`)); err != nil {
			t.Fatal(err)
		}
	}
	td.publish("u", `{"type":"still here"}`)
	if got := readText(t, conn, 5*time.Second); got != `{"type":"still here"}` {
		t.Fatalf("got %s", got)
	}
}

func TestServerPingsAndAnswersClientPings(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{"PING_INTERVAL": "50ms", "PONG_WAIT": "2s"})
	conn := td.dial("u")

	pings := make(chan struct{}, 16)
	conn.SetPingHandler(func(data string) error {
		select {
		case pings <- struct{}{}:
		default:
		}
		return conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	pongs := make(chan string, 1)
	conn.SetPongHandler(func(data string) error { pongs <- data; return nil })
	if err := conn.WriteControl(websocket.PingMessage, []byte("hello"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() { readErr <- readUntilError(conn) }()

	select {
	case data := <-pongs:
		if data != "hello" {
			t.Fatalf("pong %q, want hello", data)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no pong for the client's ping")
	}
	for i := 0; i < 3; i++ {
		select {
		case <-pings:
		case <-time.After(5 * time.Second):
			t.Fatalf("server ping %d did not arrive", i+1)
		}
	}
	// Answering pings keeps the connection open past several pong waits.
	if td.d.hub.connectionCount("u") != 1 {
		t.Fatal("connection dropped although it answered pings")
	}
	conn.Close()
	<-readErr
}

func TestClientThatStopsAnsweringPingsIsDropped(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{"PING_INTERVAL": "50ms", "PONG_WAIT": "300ms"})
	conn := td.dial("u")
	_ = conn // never read: pings go unanswered
	eventually(t, 5*time.Second, "silent client dropped", func() bool { return td.d.hub.connectionCount("u") == 0 })
}

func TestManyConcurrentConnectionsAllReceiveTheirEvents(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{"LOG_LEVEL": "warn", "PROBE_TIMEOUT": probeTimeoutUnderLoad})
	td.waitReady()
	const users, perUser = 1000, 2
	conns := make([][]*websocket.Conn, users)
	var wg sync.WaitGroup
	errs := make(chan error, users*perUser)
	for u := range users {
		conns[u] = make([]*websocket.Conn, perUser)
		for k := range perUser {
			wg.Go(func() {
				conn, _, err := websocket.DefaultDialer.Dial(fmt.Sprintf("%s?username=user%d", td.wsURL, u), nil)
				if err != nil {
					errs <- err
					return
				}
				conns[u][k] = conn
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() {
		for _, cs := range conns {
			for _, c := range cs {
				c.Close()
			}
		}
	})
	eventually(t, 10*time.Second, "all registered", func() bool { return td.d.hub.connections.Load() == users*perUser })

	for u := range users {
		td.publish(fmt.Sprintf("user%d", u), event(fmt.Sprintf("user%d", u), u))
	}
	failures := make(chan string, users*perUser)
	for u := range users {
		for _, conn := range conns[u] {
			wg.Go(func() {
				_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, data, err := conn.ReadMessage()
				if want := event(fmt.Sprintf("user%d", u), u); err != nil || string(data) != want {
					failures <- fmt.Sprintf("user%d: %q, %v", u, data, err)
				}
			})
		}
	}
	wg.Wait()
	close(failures)
	for f := range failures {
		t.Fatal(f)
	}
}

// readUntilError reads frames until the connection fails and returns why.
func readUntilError(conn *websocket.Conn) error {
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, _, err := conn.ReadMessage(); err != nil {
			var netErr interface{ Timeout() bool }
			if errors.As(err, &netErr) && netErr.Timeout() {
				return fmt.Errorf("no close within 10s: %w", err)
			}
			return err
		}
	}
}

// FuzzValidateUsername checks that no accepted username can carry a Redis
// pattern character or the channel separator, whatever the input.
func FuzzValidateUsername(f *testing.F) {
	for _, seed := range []string{"alice", "org_acme", "a*", "a:b", "", strings.Repeat("x", 129), "é", "a.b_c@d+e-f"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, username string) {
		err := validateUsername(username, "/ws")
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		if username == "" || len(username) > history.MaxUsernameBytes || strings.ContainsAny(username, "*?[]:\\ \x00") {
			t.Fatalf("accepted %q", username)
		}
	})
}

func TestRefusalsOfTheTokenCarryABearerChallengeAndNoOthers(t *testing.T) {
	td := startDaemon(t, startRedis(t), jwtEnv(map[string]string{"ALLOWED_ORIGINS": "https://app.example.com"}))
	cases := []struct {
		name      string
		query     string
		header    http.Header
		status    int
		challenge bool
	}{
		{"missing token", "", nil, http.StatusUnauthorized, true},
		{"bad token", "", bearer("not.a.jwt"), http.StatusUnauthorized, true},
		{"other user's channel", "?username=bob", bearer(hsToken(t, "alice")), http.StatusForbidden, false},
		{"bad username", "?username=a*", bearer(hsToken(t, "alice")), http.StatusBadRequest, false},
		{"foreign origin", "", http.Header{"Origin": {"https://evil.example.com"}}, http.StatusForbidden, false},
	}
	for _, tc := range cases {
		_, resp, err := websocket.DefaultDialer.Dial(td.wsURL+tc.query, tc.header)
		if err == nil || resp == nil {
			t.Fatalf("%s: dial %v, want HTTP %d", tc.name, err, tc.status)
		}
		_ = resp.Body.Close()
		challenge := resp.Header.Get("WWW-Authenticate")
		if resp.StatusCode != tc.status || (challenge == `Bearer realm="fanout"`) != tc.challenge || (!tc.challenge && challenge != "") {
			t.Errorf("%s: HTTP %d, WWW-Authenticate %q; want %d, challenge %v", tc.name, resp.StatusCode, challenge, tc.status, tc.challenge)
		}
	}
}
