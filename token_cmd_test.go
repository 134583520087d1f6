package main

import (
	"io"
	"log/slog"
	"maps"
	"strings"
	"testing"
	"time"
)

// tokenTestSecret is a JWT_SECRET of the 32 bytes the daemon requires.
const tokenTestSecret = "token-test-secret-0123456789-abcdefgh"

// daemonIdentity verifies raw as a daemon started with env would, for a
// connection asking for requested ("" for none), and returns who it is.
func daemonIdentity(t *testing.T, env map[string]string, raw, requested string) (identity, error) {
	t.Helper()
	cfg, err := loadConfig(envOf(env))
	if err != nil {
		t.Fatalf("the daemon would not start with %v: %v", env, err)
	}
	auth, err := newAuthenticator(t.Context(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return auth.verify(t.Context(), raw, requested, requested != "", "/ws")
}

// mintWith runs `fanout token args…` with env and returns the token.
func mintWith(t *testing.T, env map[string]string, args ...string) string {
	t.Helper()
	res := runCLI(t, env, append([]string{"token"}, args...)...)
	if res.code != 0 || res.stderr != "" || !oneLine(res.stdout) {
		t.Fatalf("fanout token %v: exit %d, stdout %q, stderr %q; want 0 and the token", args, res.code, res.stdout, res.stderr)
	}
	return strings.TrimSuffix(res.stdout, "\n")
}

func TestTokenIsAcceptedByTheDaemonWithTheSameEnvironment(t *testing.T) {
	cases := []struct {
		name string
		env  map[string]string
	}{
		{"defaults", map[string]string{"JWT_SECRET": tokenTestSecret}},
		{"issuer, audience and claim names", map[string]string{"JWT_SECRET": tokenTestSecret, "JWT_ISSUER": "https://auth.test",
			"JWT_AUDIENCE": "fanout", "JWT_USERNAME_CLAIM": "preferred_username", "JWT_GROUPS_CLAIM": "orgs"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			args := []string{"--username", "alice", "--ttl", "90s"}
			if tc.env["JWT_GROUPS_CLAIM"] != "" {
				args = append(args, "--groups", "acme, beta")
			}
			raw := mintWith(t, tc.env, args...)
			id, err := daemonIdentity(t, tc.env, raw, "")
			if err != nil {
				t.Fatalf("the daemon refused the token: %v", err)
			}
			if id.username != "alice" || id.subject != "alice" {
				t.Fatalf("the daemon read username %q, subject %q; want alice", id.username, id.subject)
			}
			// exp has a whole second's precision.
			if earliest, latest := start.Add(89*time.Second), time.Now().Add(90*time.Second); id.expires.Before(earliest) || id.expires.After(latest) {
				t.Fatalf("expires %v, want 90s from now (%v to %v)", id.expires, earliest, latest)
			}
			if tc.env["JWT_GROUPS_CLAIM"] == "" {
				return
			}
			for _, group := range []string{"acme", "beta"} {
				if id, err := daemonIdentity(t, tc.env, raw, group); err != nil || id.username != group || id.subject != "alice" {
					t.Fatalf("group %s: %+v, %v; want alice watching %s", group, id, err, group)
				}
			}
			if _, err := daemonIdentity(t, tc.env, raw, "gamma"); err == nil {
				t.Fatal("the token opened a group it does not list")
			}
		})
	}
}

func TestTokenIsRefusedByADaemonWithAnotherSecretOrIssuer(t *testing.T) {
	env := map[string]string{"JWT_SECRET": tokenTestSecret, "JWT_ISSUER": "https://auth.test"}
	raw := mintWith(t, env, "--username", "alice")
	for name, change := range map[string]map[string]string{
		"another secret": {"JWT_SECRET": strings.ToUpper(tokenTestSecret)},
		"another issuer": {"JWT_ISSUER": "https://other.test"},
	} {
		other := maps.Clone(env)
		maps.Copy(other, change)
		if _, err := daemonIdentity(t, other, raw, ""); err == nil {
			t.Errorf("%s: the daemon accepted the token", name)
		}
	}
}

func TestTokenDefaultsToAnHourAndExpiresAtItsTTL(t *testing.T) {
	env := map[string]string{"JWT_SECRET": tokenTestSecret}
	id, err := daemonIdentity(t, env, mintWith(t, env, "--username", "bob"), "")
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Until(id.expires); left < 59*time.Minute || left > time.Hour {
		t.Fatalf("default token expires in %v, want 1h", left)
	}
	id, err = daemonIdentity(t, env, mintWith(t, env, "--username", "bob", "--ttl", "1s"), "")
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Until(id.expires); left > 2*time.Second {
		t.Fatalf("--ttl 1s token expires in %v", left)
	}
}

func TestTokenWithoutJWTSecretOrWithBadFlagsIsExit2WithOneLine(t *testing.T) {
	secret := map[string]string{"JWT_SECRET": tokenTestSecret}
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want []string
	}{
		{"no JWT_SECRET", nil, []string{"--username", "alice"}, []string{"JWT_SECRET", "docs/security.md"}},
		{"empty JWT_SECRET", map[string]string{"JWT_SECRET": ""}, []string{"--username", "alice"}, []string{"JWT_SECRET", "docs/security.md"}},
		{"a public key instead", map[string]string{"JWT_JWKS_URL": "https://idp.test/jwks.json"}, []string{"--username", "alice"}, []string{"JWT_SECRET"}},
		{"short JWT_SECRET", map[string]string{"JWT_SECRET": "short"}, []string{"--username", "alice"}, []string{"JWT_SECRET", "32 bytes"}},
		{"no --username", secret, nil, []string{"--username"}},
		{"bad --username", secret, []string{"--username", "a:b"}, []string{"--username"}},
		{"bad --ttl", secret, []string{"--username", "alice", "--ttl", "soon"}, []string{"--ttl", "soon"}},
		{"negative --ttl", secret, []string{"--username", "alice", "--ttl", "-1h"}, []string{"--ttl"}},
		{"--groups without JWT_GROUPS_CLAIM", secret, []string{"--username", "alice", "--groups", "acme"}, []string{"JWT_GROUPS_CLAIM"}},
		{"an argument", secret, []string{"alice"}, []string{`"alice"`}},
	}
	for _, tc := range cases {
		res := runCLI(t, tc.env, append([]string{"token"}, tc.args...)...)
		if res.code != 2 || res.stdout != "" || !oneLine(res.stderr) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want 2, no token, one line", tc.name, res.code, res.stdout, res.stderr)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(res.stderr, w) {
				t.Errorf("%s: stderr %q lacks %q", tc.name, res.stderr, w)
			}
		}
	}
}
