package e2e

import (
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// testSecret is the HMAC key of the JWT_SECRET test daemons.
const testSecret = "test-secret-0123456789-abcdefghijklmnop"

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
