package main

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
)

// testSecret is the HMAC key of the JWT_SECRET test daemons.
const testSecret = "test-secret-0123456789-abcdefghijklmnop"

// Test keys, generated once per test binary.
var (
	testRSAKey = sync.OnceValue(func() *rsa.PrivateKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		return k
	})
	testECKey = sync.OnceValue(func() *ecdsa.PrivateKey { return newECKey() })
	testEdKey = sync.OnceValue(func() ed25519.PrivateKey {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	})
)

func newECKey() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

// claims returns the claims of a valid token for sub, expiring in ttl.
func claims(sub string, ttl time.Duration) jwt.MapClaims {
	return jwt.MapClaims{"sub": sub, "exp": time.Now().Add(ttl).Unix(), "iss": "https://auth.test", "aud": "fanout"}
}

// mint signs c with method and key, optionally with a kid header.
func mint(tb testing.TB, method jwt.SigningMethod, key any, c jwt.MapClaims, kid string) string {
	tb.Helper()
	tok := jwt.NewWithClaims(method, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		tb.Fatalf("sign token: %v", err)
	}
	return s
}

// hsToken is a valid HS256 token of the test secret for sub.
func hsToken(tb testing.TB, sub string) string {
	return mint(tb, jwt.SigningMethodHS256, []byte(testSecret), claims(sub, time.Hour), "")
}

// jwtEnv is the environment of a daemon that verifies HS tokens of
// testSecret, issued by https://auth.test for the fanout audience.
func jwtEnv(extra map[string]string) map[string]string {
	env := map[string]string{
		"JWT_SECRET":       testSecret,
		"JWT_ISSUER":       "https://auth.test",
		"JWT_AUDIENCE":     "fanout",
		"JWT_GROUPS_CLAIM": "orgs",
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

func bearer(token string) http.Header {
	return http.Header{"Authorization": {"Bearer " + token}}
}

func TestTokensAreVerifiedBeforeTheUpgrade(t *testing.T) {
	td := startDaemon(t, startRedis(t), jwtEnv(nil))
	hs := func(c jwt.MapClaims) string { return mint(t, jwt.SigningMethodHS256, []byte(testSecret), c, "") }
	valid := hsToken(t, "alice")

	noSub := claims("", time.Hour)
	delete(noSub, "sub")
	noExp := claims("alice", time.Hour)
	delete(noExp, "exp")
	future := claims("alice", time.Hour)
	future["nbf"] = time.Now().Add(time.Hour).Unix()
	wrongAud := claims("alice", time.Hour)
	wrongAud["aud"] = "another-service"
	wrongIss := claims("alice", time.Hour)
	wrongIss["iss"] = "https://evil.test"
	numericSub := claims("alice", time.Hour)
	numericSub["sub"] = 42
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, claims("alice", time.Hour)).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(valid, ".")
	bobPayload := strings.Split(hsToken(t, "bob"), ".")[1]
	// Another base64url letter in the middle of the signature (every bit
	// of it counts there), so the token still decodes.
	flipped := []byte(parts[2])
	flipped[3] = map[bool]byte{true: 'B', false: 'A'}[flipped[3] == 'A']

	cases := []struct {
		name   string
		query  string
		header http.Header
		status int
		reason string
	}{
		{"no token", "?username=alice", nil, 401, "missing token"},
		{"expired", "", bearer(hs(claims("alice", -time.Minute))), 401, "invalid token: expired"},
		{"wrong key", "", bearer(mint(t, jwt.SigningMethodHS256, []byte(testSecret+"x"), claims("alice", time.Hour), "")), 401, "bad signature"},
		{"alg none", "", bearer(none), 401, "algorithm not allowed"},
		{"RS256 where HMAC is pinned", "", bearer(mint(t, jwt.SigningMethodRS256, testRSAKey(), claims("alice", time.Hour), "")), 401, "algorithm not allowed"},
		{"wrong audience", "", bearer(hs(wrongAud)), 401, "wrong audience"},
		{"wrong issuer", "", bearer(hs(wrongIss)), 401, "wrong issuer"},
		{"missing sub", "", bearer(hs(noSub)), 401, "no sub claim"},
		{"sub not a string", "", bearer(hs(numericSub)), 401, "no sub claim"},
		{"missing exp", "", bearer(hs(noExp)), 401, "exp claim missing"},
		{"not valid yet", "", bearer(hs(future)), 401, "not valid yet"},
		{"tampered signature", "", bearer(parts[0] + "." + parts[1] + "." + string(flipped)), 401, "bad signature"},
		{"tampered payload", "", bearer(parts[0] + "." + bobPayload + "." + parts[2]), 401, "bad signature"},
		{"garbage", "", bearer("not.a.jwt"), 401, "malformed"},
		{"oversized", "", bearer(strings.Repeat("a", maxTokenBytes+1)), 401, "longer than"},
		{"not a bearer header", "", http.Header{"Authorization": {"Basic " + valid}}, 401, "Bearer <token>"},
		{"other user's channel", "?username=bob", bearer(valid), 403, `token is for "alice", and "bob" is not in its orgs claim`},
		{"group the token lacks", "?username=org_other", bearer(hs(withOrgs(claims("alice", time.Hour), "org_acme"))), 403, "not in its orgs claim"},
		{"sub not a usable username", "", bearer(hs(claims("alice:x", time.Hour))), 403, "not a usable username"},
		{"bad username next to a token", "?username=ali*", bearer(valid), 400, `"*"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := tryDial(t, td.wsURL+c.query, c.header)
			if got.status != c.status || !strings.Contains(got.line, c.reason) {
				t.Fatalf("HTTP %d %q; want %d with one line containing %q", got.status, got.line, c.status, c.reason)
			}
		})
	}
	if got := td.d.hub.connections.Load(); got != 0 {
		t.Fatalf("%d connections registered", got)
	}
	if got, want := td.d.stats.Rejected[rejectUnauthorized].Load(), uint64(16); got != want {
		t.Fatalf("unauthorized rejections counted %d, want %d", got, want)
	}
}

func withOrgs(c jwt.MapClaims, orgs ...string) jwt.MapClaims {
	c["orgs"] = orgs
	return c
}

func TestTokenDecidesTheChannel(t *testing.T) {
	td := startDaemon(t, startRedis(t), jwtEnv(nil))
	td.waitReady()
	alice := hsToken(t, "alice")
	member := mint(t, jwt.SigningMethodHS384, []byte(testSecret), withOrgs(claims("carol", time.Hour), "org_acme", "org_beta"), "")

	// The token alone names the user: header, query parameter, or both
	// the parameter and a matching username; HS384 and HS512 are accepted.
	byHeader := dialWS(t, td.wsURL, bearer(alice))
	byQuery := dialWS(t, td.wsURL+"?token="+url.QueryEscape(alice), nil)
	matching := dialWS(t, td.wsURL+"?username=alice&token="+alice, nil)
	hs512 := dialWS(t, td.wsURL, bearer(mint(t, jwt.SigningMethodHS512, []byte(testSecret), claims("alice", time.Hour), "")))
	// A group member watches the group's channel, and no one else's.
	org := dialWS(t, td.wsURL+"?username=org_acme", bearer(member))
	carol := dialWS(t, td.wsURL, bearer(member))
	eventually(t, 5*time.Second, "6 connections registered", func() bool { return td.d.hub.connections.Load() == 6 })

	td.publish("bob", event("bob", 1))
	td.publish("org_beta", event("org_beta", 1))
	td.publish("alice", event("alice", 1))
	td.publish("org_acme", event("org_acme", 1))
	td.publish("carol", event("carol", 1))
	for _, conn := range []*websocket.Conn{byHeader, byQuery, matching, hs512} {
		if got := readText(t, conn, 5*time.Second); got != event("alice", 1) {
			t.Fatalf("alice's connection got %s", got)
		}
	}
	if got := readText(t, org, 5*time.Second); got != event("org_acme", 1) {
		t.Fatalf("org_acme's connection got %s", got)
	}
	if got := readText(t, carol, 5*time.Second); got != event("carol", 1) {
		t.Fatalf("carol's connection got %s", got)
	}
	if logs := td.logs.String(); !strings.Contains(logs, `msg="New WebSocket connection" username=org_acme remote=127.0.0.1 subject=carol`) {
		t.Fatalf("the group connection's log line does not name its subject:\n%s", logs)
	}
}

func TestPublicKeyFilePinsTheAlgorithmToTheKeyType(t *testing.T) {
	r := startRedis(t)
	dir := t.TempDir()
	keys := []struct {
		name   string
		public any
		method jwt.SigningMethod
		signer any
	}{
		{"RS256", &testRSAKey().PublicKey, jwt.SigningMethodRS256, testRSAKey()},
		{"ES256", &testECKey().PublicKey, jwt.SigningMethodES256, testECKey()},
		{"EdDSA", testEdKey().Public(), jwt.SigningMethodEdDSA, testEdKey()},
	}
	for _, k := range keys {
		t.Run(k.name, func(t *testing.T) {
			der, err := x509.MarshalPKIXPublicKey(k.public)
			if err != nil {
				t.Fatal(err)
			}
			pemBytes := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
			path := filepath.Join(dir, k.name+".pem")
			if err := os.WriteFile(path, pemBytes, 0o600); err != nil {
				t.Fatal(err)
			}
			td := startDaemon(t, r, map[string]string{"JWT_PUBLIC_KEY_FILE": path})

			dialWS(t, td.wsURL, bearer(mint(t, k.method, k.signer, claims("alice", time.Hour), "")))

			// The classic confusion: an HS256 token whose "secret" is the
			// public key everyone can read.
			confused := mint(t, jwt.SigningMethodHS256, pemBytes, claims("alice", time.Hour), "")
			if got := tryDial(t, td.wsURL, bearer(confused)); got.status != 401 || !strings.Contains(got.line, "algorithm not allowed") {
				t.Fatalf("HS256 token signed with the public key: HTTP %d %q, want 401", got.status, got.line)
			}
			other := mint(t, jwt.SigningMethodES256, newECKey(), claims("alice", time.Hour), "")
			if got := tryDial(t, td.wsURL, bearer(other)); got.status != 401 {
				t.Fatalf("token of another key: HTTP %d, want 401", got.status)
			}
		})
	}
}

func TestConnectionIsClosedWhenItsTokenExpires(t *testing.T) {
	t.Parallel()
	td := startDaemon(t, startRedis(t), jwtEnv(nil))
	td.waitReady()
	// exp has whole seconds: at least one full second from now.
	exp := time.Now().Truncate(time.Second).Add(2 * time.Second)
	c := claims("alice", 0)
	c["exp"] = exp.Unix()
	conn := dialWS(t, td.wsURL, bearer(mint(t, jwt.SigningMethodHS256, []byte(testSecret), c, "")))
	eventually(t, 5*time.Second, "registered", func() bool { return td.d.hub.connectionCount("alice") == 1 })

	td.publish("alice", event("alice", 1))
	if got := readText(t, conn, 5*time.Second); got != event("alice", 1) {
		t.Fatalf("got %s before expiry", got)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := conn.ReadMessage()
	closedAt := time.Now()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 4001 || ce.Text != "token expired" {
		t.Fatalf("read after expiry: %v, want close 4001 \"token expired\"", err)
	}
	if closedAt.Before(exp) || closedAt.After(exp.Add(time.Second)) {
		t.Fatalf("closed at %s, token expired at %s", closedAt.Format(time.StampMilli), exp.Format(time.StampMilli))
	}
	t.Logf("closed %v after exp", closedAt.Sub(exp).Round(time.Millisecond))
	if n := td.d.stats.ExpiredDisconnects.Load(); n != 1 {
		t.Fatalf("expired disconnects = %d, want 1", n)
	}
	eventually(t, 5*time.Second, "unregistered", func() bool { return td.d.hub.connectionCount("alice") == 0 })
}

func TestCookieTokenOnlyFromAllowedOrigins(t *testing.T) {
	td := startDaemon(t, startRedis(t), jwtEnv(map[string]string{
		"JWT_COOKIE":      "fanout_token",
		"ALLOWED_ORIGINS": "https://app.example.com",
	}))
	cookie := func(origin string) http.Header {
		h := http.Header{"Cookie": {"fanout_token=" + hsToken(t, "alice")}}
		if origin != "" {
			h.Set("Origin", origin)
		}
		return h
	}
	dialWS(t, td.wsURL, cookie("https://app.example.com"))
	dialWS(t, td.wsURL, cookie("")) // not a browser: no ambient cookie to abuse
	if got := tryDial(t, td.wsURL, cookie("https://evil.example.com")); got.status != 403 || !strings.Contains(got.line, "ALLOWED_ORIGINS") {
		t.Fatalf("cookie from a foreign origin: HTTP %d %q, want 403", got.status, got.line)
	}
	if got := tryDial(t, td.wsURL, nil); got.status != 401 || !strings.Contains(got.line, "fanout_token cookie") {
		t.Fatalf("no token: HTTP %d %q, want 401 naming the cookie", got.status, got.line)
	}
}

// jwksServer serves a JSON Web Key Set that a test can replace.
type jwksServer struct {
	*httptest.Server
	mu   sync.Mutex
	keys []map[string]string
	// down makes it answer 503.
	down bool
}

func newJWKSServer(t *testing.T) *jwksServer {
	s := &jwksServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.down {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": s.keys})
	}))
	t.Cleanup(s.Close)
	return s
}

// serve replaces the key set with the public halves of keys, by kid.
func (s *jwksServer) serve(keys map[string]*ecdsa.PrivateKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = false
	s.keys = nil
	b64 := base64.RawURLEncoding.EncodeToString
	for kid, k := range keys {
		pub, err := k.PublicKey.ECDH()
		if err != nil {
			panic(err)
		}
		raw := pub.Bytes() // 0x04 || X || Y
		s.keys = append(s.keys, map[string]string{
			"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
			"x": b64(raw[1:33]), "y": b64(raw[33:65]),
		})
	}
}

func TestJWKSKeysAreFetchedAndRotated(t *testing.T) {
	keyA, keyB := newECKey(), newECKey()
	jwks := newJWKSServer(t)
	jwks.serve(map[string]*ecdsa.PrivateKey{"a": keyA})
	// The rotation below is picked up at once because the new kid is
	// unknown, well before the periodic refresh; that refresh only rescues
	// a first fetch that timed out on a loaded machine.
	td := startDaemon(t, startRedis(t), map[string]string{"JWT_JWKS_URL": jwks.URL, "JWT_JWKS_REFRESH": "3s"})
	td.waitReady()
	tokenA := mint(t, jwt.SigningMethodES256, keyA, claims("alice", time.Hour), "a")
	tokenB := mint(t, jwt.SigningMethodES256, keyB, claims("alice", time.Hour), "b")

	dialWS(t, td.wsURL, bearer(tokenA))
	if got := tryDial(t, td.wsURL, bearer(hsToken(t, "alice"))); got.status != 401 {
		t.Fatalf("HS256 token against a JWKS: HTTP %d, want 401", got.status)
	}
	forged := mint(t, jwt.SigningMethodES256, keyB, claims("alice", time.Hour), "a")
	if got := tryDial(t, td.wsURL, bearer(forged)); got.status != 401 {
		t.Fatalf("token signed by another key under kid a: HTTP %d, want 401", got.status)
	}

	jwks.serve(map[string]*ecdsa.PrivateKey{"b": keyB})
	dialWS(t, td.wsURL, bearer(tokenB))
	if got := tryDial(t, td.wsURL, bearer(tokenA)); got.status != 401 || !strings.Contains(got.line, "unverifiable") {
		t.Fatalf("token of the retired key: HTTP %d %q, want 401", got.status, got.line)
	}
}

func TestJWKSUnreachableAtStartIsNotReadyUntilFetched(t *testing.T) {
	t.Parallel()
	key := newECKey()
	jwks := newJWKSServer(t)
	jwks.mu.Lock()
	jwks.down = true
	jwks.mu.Unlock()
	td := startDaemon(t, startRedis(t), map[string]string{"JWT_JWKS_URL": jwks.URL, "JWT_JWKS_REFRESH": "200ms"})

	eventually(t, 10*time.Second, "Redis subscribed", func() bool { ok, _ := td.d.sub.ready(); return ok })
	status, body, err := get(td.baseURL + "/ready")
	if err != nil || status != 503 || !strings.Contains(body, "JWKS") {
		t.Fatalf("/ready with the JWKS down: %d %q %v, want 503 naming the JWKS", status, body, err)
	}
	eventually(t, 5*time.Second, "JWKS fetch failure logged", func() bool {
		return strings.Contains(td.logs.String(), `msg="Cannot fetch JWKS"`)
	})

	jwks.serve(map[string]*ecdsa.PrivateKey{"k1": key})
	td.waitReady()
	dialWS(t, td.wsURL, bearer(mint(t, jwt.SigningMethodES256, key, claims("alice", time.Hour), "k1")))
}

func TestTokensNeverReachTheLogs(t *testing.T) {
	td := startDaemon(t, startRedis(t), jwtEnv(map[string]string{
		"JWT_COOKIE": "fanout_token", "ALLOWED_ORIGINS": "https://app.example.com",
	}))
	td.waitReady()
	good := hsToken(t, "alice")
	expired := mint(t, jwt.SigningMethodHS256, []byte(testSecret), claims("alice", -time.Minute), "")
	bad := mint(t, jwt.SigningMethodHS256, []byte("an-entirely-different-secret-value!"), claims("alice", time.Hour), "")
	var secrets []string
	for _, tok := range []string{good, expired, bad} {
		secrets = append(secrets, tok, strings.Split(tok, ".")[2])
	}

	conn := dialWS(t, td.wsURL+"?token="+good, nil)
	dialWS(t, td.wsURL, bearer(good))
	dialWS(t, td.wsURL, http.Header{"Cookie": {"fanout_token=" + good}, "Origin": {"https://app.example.com"}})
	for _, tok := range []string{expired, bad} {
		tryDial(t, td.wsURL+"?username=alice&token="+tok, nil)
		tryDial(t, td.wsURL, bearer(tok))
		tryDial(t, td.wsURL, http.Header{"Cookie": {"fanout_token=" + tok}, "Origin": {"https://evil.example.com"}})
	}
	// A plain HTTP request to /ws fails the upgrade after authentication.
	get(td.baseURL + "/ws?token=" + good)
	td.publish("alice", event("alice", 1))
	readText(t, conn, 5*time.Second)
	_ = conn.Close()
	if err := td.stop(); err != nil {
		t.Fatal(err)
	}

	logs := td.logs.String()
	if countLines(logs, "Rejected WebSocket request") < 6 {
		t.Fatalf("expected the rejections to be logged:\n%s", logs)
	}
	for _, s := range append(secrets, testSecret) {
		if strings.Contains(logs, s) {
			t.Fatalf("logs contain a token or secret (%.12s…):\n%s", s, logs)
		}
	}
}

// FuzzAuthenticate feeds arbitrary query strings, Authorization headers and
// cookies to the JWT authenticator: it must never panic, and whatever it
// accepts must be a usable channel the token grants.
func FuzzAuthenticate(f *testing.F) {
	cfg, err := loadConfig(envOf(jwtEnv(map[string]string{"JWT_COOKIE": "t", "ALLOWED_ORIGINS": "https://a.example"})))
	if err != nil {
		f.Fatal(err)
	}
	auth, err := newAuthenticator(f.Context(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		f.Fatal(err)
	}
	good := hsToken(f, "alice")
	member := mint(f, jwt.SigningMethodHS256, []byte(testSecret), withOrgs(claims("carol", time.Hour), "org_acme"), "")
	f.Add("username=alice", "Bearer "+good, "")
	f.Add("username=org_acme&token="+member, "", "")
	f.Add("", "", "t="+good)
	f.Add("token="+good[:len(good)-3], "bearer ", "t=")
	f.Add("username=%zz&token=a.b.c", "Bearer a.b.c", "t=\x00")
	f.Add("token=eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.", "", "")

	f.Fuzz(func(t *testing.T, rawQuery, authorization, cookie string) {
		r := &http.Request{URL: &url.URL{Path: "/ws", RawQuery: rawQuery}, Header: http.Header{}}
		r = r.WithContext(t.Context())
		if authorization != "" {
			r.Header.Set("Authorization", authorization)
		}
		if cookie != "" {
			r.Header.Set("Cookie", cookie)
		}
		id, err := auth.authenticate(r)
		if err != nil {
			var aerr *authError
			if !errors.As(err, &aerr) || aerr.status < 400 || aerr.status > 403 || strings.ContainsAny(aerr.reason, "\r\n") {
				t.Fatalf("error %#v is not a one-line 4xx", err)
			}
			return
		}
		if validateUsername(id.username, "/ws") != nil || id.expires.IsZero() {
			t.Fatalf("accepted an unusable identity %+v", id)
		}
		if id.username != id.subject && !(id.subject == "carol" && id.username == "org_acme") {
			t.Fatalf("identity %+v: channel not granted by the token", id)
		}
		if id.subject != "alice" && id.subject != "carol" {
			t.Fatalf("accepted a token nobody signed: %+v", id)
		}
	})
}

// BenchmarkAuthenticate measures the token check each /ws request pays,
// for each kind of key.
func BenchmarkAuthenticate(b *testing.B) {
	dir := b.TempDir()
	writeKey := func(name string, public any) string {
		der, err := x509.MarshalPKIXPublicKey(public)
		if err != nil {
			b.Fatal(err)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
			b.Fatal(err)
		}
		return path
	}
	cases := []struct {
		name   string
		env    map[string]string
		method jwt.SigningMethod
		signer any
	}{
		{"HS256", map[string]string{"JWT_SECRET": testSecret}, jwt.SigningMethodHS256, []byte(testSecret)},
		{"RS256", map[string]string{"JWT_PUBLIC_KEY_FILE": writeKey("rsa.pem", &testRSAKey().PublicKey)}, jwt.SigningMethodRS256, testRSAKey()},
		{"ES256", map[string]string{"JWT_PUBLIC_KEY_FILE": writeKey("ec.pem", &testECKey().PublicKey)}, jwt.SigningMethodES256, testECKey()},
		{"EdDSA", map[string]string{"JWT_PUBLIC_KEY_FILE": writeKey("ed.pem", testEdKey().Public())}, jwt.SigningMethodEdDSA, testEdKey()},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			cfg, err := loadConfig(envOf(c.env))
			if err != nil {
				b.Fatal(err)
			}
			auth, err := newAuthenticator(b.Context(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				b.Fatal(err)
			}
			token := mint(b, c.method, c.signer, claims("alice", time.Hour), "")
			r := httptest.NewRequest(http.MethodGet, "/ws?token="+token, nil)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := auth.authenticate(r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
