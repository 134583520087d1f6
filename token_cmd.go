package main

import (
	"fanout/history"

	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// The exit statuses of `fanout token`.
const (
	// tokenFailed: the token could not be signed.
	tokenFailed = 1
	// tokenBadUsage: a flag or the environment is wrong; no token.
	tokenBadUsage = 2
)

const tokenUsage = `usage: fanout token --username NAME [--groups A,B] [--ttl DURATION]

Prints a JWT for NAME, signed (HS256) with JWT_SECRET, that a daemon run
with the same environment accepts: the username in JWT_USERNAME_CLAIM
(default sub), the groups in JWT_GROUPS_CLAIM, iss and aud from JWT_ISSUER
and JWT_AUDIENCE when set, and an exp TTL from now. It is for testing and
for services that share the secret; in production your backend or identity
provider mints the browsers' tokens (docs/security.md).

  --username NAME   the user the token is for (required)
  --groups A,B      group channels the holder may watch too (needs
                    JWT_GROUPS_CLAIM)
  --ttl DURATION    how long the token is valid (default 1h); the daemon
                    closes a connection at its token's exp

  FANOUT_TOKEN=$(fanout token --username alice) fanout tail

Exit status: 0 with the token on stdout; 2 for bad usage, or when
JWT_SECRET is not set (nothing is printed on stdout).
`

// defaultTokenTTL is how long a token of `fanout token` is valid without --ttl.
const defaultTokenTTL = time.Hour

// runToken runs `fanout token` with the arguments that follow "token" and
// returns the exit status. The token goes to stdout; a problem to stderr,
// in one line.
func runToken(_ context.Context, args []string, lookupEnv func(string) (string, bool), _ io.Reader, stdout, stderr io.Writer) int {
	fail := func(status int, format string, a ...any) int {
		fmt.Fprintf(stderr, "fanout token: "+format+"\n", a...)
		return status
	}
	fs := flag.NewFlagSet("fanout token", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	username := fs.String("username", "", "")
	groups := fs.String("groups", "", "")
	ttlText := fs.String("ttl", defaultTokenTTL.String(), "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, tokenUsage)
			return 0
		}
		return fail(tokenBadUsage, "%v (see fanout token --help)", err)
	}
	if fs.NArg() > 0 {
		return fail(tokenBadUsage, "unexpected argument %q: give the user with --username (see fanout token --help)", fs.Arg(0))
	}
	if *username == "" {
		return fail(tokenBadUsage, "--username is required: the user the token is for")
	}
	if err := history.CheckUsername(*username); err != nil {
		return fail(tokenBadUsage, "--username: %v", err)
	}
	ttl, err := time.ParseDuration(*ttlText)
	if err != nil || ttl <= 0 {
		return fail(tokenBadUsage, "--ttl %q: must be a positive duration such as 30s, 15m or 1h", *ttlText)
	}
	var groupList []string
	for group := range strings.SplitSeq(*groups, ",") {
		if group = strings.TrimSpace(group); group == "" {
			continue
		}
		if err := history.CheckUsername(group); err != nil {
			return fail(tokenBadUsage, "--groups: %q: %v", group, err)
		}
		groupList = append(groupList, group)
	}

	// The JWT settings as the daemon reads them, so that it accepts the token.
	env := &envReader{lookup: lookupEnv}
	mode, jwtCfg := env.auth()
	if env.err != nil {
		return fail(tokenBadUsage, "configuration: %v", env.err)
	}
	if mode != authJWT || jwtCfg.Secret == nil {
		return fail(tokenBadUsage, "JWT_SECRET is not set: fanout token signs with the secret the daemon verifies with; "+
			"with JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL your identity provider mints tokens (README.md, Security: docs/security.md)")
	}
	if len(groupList) > 0 && jwtCfg.GroupsClaim == "" {
		return fail(tokenBadUsage, "--groups needs JWT_GROUPS_CLAIM, the claim the daemon reads groups from (set it for both)")
	}

	signed, err := mintToken(jwtCfg, *username, groupList, time.Now(), ttl)
	if err != nil {
		return fail(tokenFailed, "%v", err)
	}
	fmt.Fprintln(stdout, signed)
	return 0
}

// mintToken returns a token for username and groups, issued at now and
// valid for ttl, signed with HS256 and cfg's secret, with the claims cfg
// makes the daemon check.
func mintToken(cfg JWTConfig, username string, groups []string, now time.Time, ttl time.Duration) (string, error) {
	claims := jwt.MapClaims{
		"iat": now.Unix(),
		"exp": now.Add(ttl).Unix(),
	}
	if cfg.Issuer != "" {
		claims["iss"] = cfg.Issuer
	}
	if cfg.Audience != "" {
		claims["aud"] = cfg.Audience
	}
	if len(groups) > 0 {
		claims[cfg.GroupsClaim] = groups
	}
	// Last, so that no other claim can overwrite the username.
	claims[cfg.UsernameClaim] = username
	signed, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(cfg.Secret)
	if err != nil {
		return "", fmt.Errorf("sign the token: %w", err)
	}
	return signed, nil
}
