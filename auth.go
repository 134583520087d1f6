package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

// maxTokenBytes bounds a token before it is parsed.
const maxTokenBytes = 8192

// identity is who a /ws request is, once authenticated: the channel it
// watches and, when a token was used, when that token expires.
type identity struct {
	// username is the channel the connection receives (workflow:events:{username}).
	username string
	// subject is the token's username; it differs from username when a
	// group member watches a group channel. Empty without authentication.
	subject string
	// expires is when the connection must be closed (zero: never).
	expires time.Time
}

// authError is a refused /ws request: the HTTP status and a one-line reason
// that never holds the token.
type authError struct {
	status int
	reason string
}

func (e *authError) Error() string { return e.reason }

func unauthorized(format string, args ...any) *authError {
	return &authError{status: http.StatusUnauthorized, reason: fmt.Sprintf(format, args...)}
}

func forbidden(format string, args ...any) *authError {
	return &authError{status: http.StatusForbidden, reason: fmt.Sprintf(format, args...)}
}

// Authenticator turns a /ws request into an identity. Without JWT it takes
// the username from the query; with JWT it verifies the token and takes the
// username from it.
type Authenticator struct {
	cfg     JWTConfig
	enabled bool
	parser  *jwt.Parser
	// keyfunc returns the verification key for a token; nil without JWT.
	keyfunc func(ctx context.Context) jwt.Keyfunc
	// jwks, when JWT_JWKS_URL is set, holds the fetched keys.
	jwks keyfunc.Keyfunc
}

// newAuthenticator builds the authenticator for cfg. With JWT_JWKS_URL it
// fetches the key set and refreshes it in the background until ctx ends;
// the first fetch may fail (the IdP may be down): ready reports it.
func newAuthenticator(ctx context.Context, cfg Config, logger *slog.Logger) (*Authenticator, error) {
	a := &Authenticator{cfg: cfg.JWT, enabled: cfg.AuthMode == authJWT}
	if !a.enabled {
		return a, nil
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(cfg.JWT.Methods),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(cfg.JWT.Leeway),
	}
	if cfg.JWT.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.JWT.Issuer))
	}
	if cfg.JWT.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.JWT.Audience))
	}
	a.parser = jwt.NewParser(opts...)

	switch {
	case cfg.JWT.Secret != nil:
		a.keyfunc = staticKey(cfg.JWT.Secret)
	case cfg.JWT.PublicKey != nil:
		a.keyfunc = staticKey(cfg.JWT.PublicKey)
	default:
		refreshErrors := newLogLimiter(1.0/60, 3)
		jwks, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{cfg.JWT.JWKSURL}, keyfunc.Override{
			HTTPTimeout:     5 * time.Second,
			RefreshInterval: cfg.JWT.JWKSRefresh,
			// A token signed with a key not yet fetched (a rotation)
			// triggers a fetch, at most one every 10 s. jwkset bounds both
			// the wait for the limiter and the fetch itself by
			// RateLimitWaitMax, so it must leave the fetch its time (1 ms
			// made most fetches fail): a token with an unknown kid fails at
			// once when the next fetch is more than 5 s away, and otherwise
			// waits for it.
			RefreshUnknownKID: rate.NewLimiter(rate.Every(10*time.Second), 1),
			RateLimitWaitMax:  5 * time.Second,
			RefreshErrorHandlerFunc: func(u string) func(context.Context, error) {
				return func(_ context.Context, err error) {
					refreshErrors.log(logger, slog.LevelWarn, "Cannot fetch JWKS", "url", u, "err", err)
				}
			},
		})
		if err != nil {
			return nil, fmt.Errorf("JWKS %s: %w", cfg.JWT.JWKSURL, err)
		}
		a.jwks = jwks
		a.keyfunc = jwks.KeyfuncCtx
	}
	return a, nil
}

func staticKey(key any) func(context.Context) jwt.Keyfunc {
	return func(context.Context) jwt.Keyfunc {
		return func(*jwt.Token) (any, error) { return key, nil }
	}
}

// ready reports whether tokens can be verified: false while a JWKS has
// yielded no key.
func (a *Authenticator) ready(ctx context.Context) (bool, string) {
	if a.jwks == nil {
		return true, ""
	}
	keys, err := a.jwks.Storage().KeyReadAll(ctx)
	if err != nil || len(keys) == 0 {
		return false, "no JWKS key fetched yet from JWT_JWKS_URL"
	}
	return true, ""
}

// authenticate returns the identity of r, or an *authError.
func (a *Authenticator) authenticate(r *http.Request) (identity, error) {
	query := r.URL.Query()
	requested := query.Get("username")
	if !a.enabled {
		if err := validateUsername(requested, r.URL.Path); err != nil {
			return identity{}, &authError{status: http.StatusBadRequest, reason: err.Error()}
		}
		return identity{username: requested}, nil
	}

	raw, err := a.tokenFrom(r, query.Get("token"))
	if err != nil {
		return identity{}, err
	}
	return a.verify(r.Context(), raw, requested, query.Has("username"), r.URL.Path)
}

// tokenFrom takes the token from the Authorization header, the token query
// parameter or the JWT_COOKIE cookie, in that order.
func (a *Authenticator) tokenFrom(r *http.Request, fromQuery string) (string, error) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, token, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return "", unauthorized("Authorization header must be: Bearer <token>")
		}
		return strings.TrimSpace(token), nil
	}
	if fromQuery != "" {
		return fromQuery, nil
	}
	if a.cfg.Cookie != "" {
		if c, err := r.Cookie(a.cfg.Cookie); err == nil && c.Value != "" {
			return c.Value, nil
		}
	}
	where := "the Authorization: Bearer header or the token query parameter"
	if a.cfg.Cookie != "" {
		where += " or the " + a.cfg.Cookie + " cookie"
	}
	return "", unauthorized("missing token: send a JWT in %s", where)
}

// verify checks the token and decides which channel it may watch: its own
// username, or requested when that is one of its groups. endpoint is the
// path asked for (/ws or /events), named when requested is empty.
func (a *Authenticator) verify(ctx context.Context, raw, requested string, hasRequested bool, endpoint string) (identity, error) {
	if len(raw) > maxTokenBytes {
		return identity{}, unauthorized("invalid token: longer than %d bytes", maxTokenBytes)
	}
	claims := jwt.MapClaims{}
	if _, err := a.parser.ParseWithClaims(raw, claims, a.keyfunc(ctx)); err != nil {
		return identity{}, unauthorized("invalid token: %s", tokenProblem(err))
	}
	exp, err := claims.GetExpirationTime()
	if err != nil || exp == nil {
		return identity{}, unauthorized("invalid token: exp claim missing")
	}

	subject, ok := claims[a.cfg.UsernameClaim].(string)
	if !ok || subject == "" {
		return identity{}, unauthorized("invalid token: no %s claim holding the username (JWT_USERNAME_CLAIM)", a.cfg.UsernameClaim)
	}
	if err := validateUsername(subject, endpoint); err != nil {
		return identity{}, forbidden("token's %s claim is not a usable username: %v", a.cfg.UsernameClaim, err)
	}
	id := identity{username: subject, subject: subject, expires: exp.Add(a.cfg.Leeway)}
	if !hasRequested || requested == subject {
		return id, nil
	}
	if err := validateUsername(requested, endpoint); err != nil {
		return identity{}, &authError{status: http.StatusBadRequest, reason: err.Error()}
	}
	if a.cfg.GroupsClaim != "" && slices.Contains(claimStrings(claims[a.cfg.GroupsClaim]), requested) {
		id.username = requested
		return id, nil
	}
	if a.cfg.GroupsClaim == "" {
		return identity{}, forbidden("token is for %q, not %q: omit username, or set JWT_GROUPS_CLAIM to allow group channels", subject, requested)
	}
	return identity{}, forbidden("token is for %q, and %q is not in its %s claim", subject, requested, a.cfg.GroupsClaim)
}

// claimStrings reads a claim that is a string or a list of strings.
func claimStrings(v any) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		list := make([]string, 0, len(v))
		for _, item := range v {
			if s, ok := item.(string); ok {
				list = append(list, s)
			}
		}
		return list
	}
	return nil
}

// tokenProblem names what is wrong with a token in a fixed phrase, so that
// no part of the token or of the library's message reaches the client or
// the log.
func tokenProblem(err error) string {
	problems := []struct {
		err    error
		phrase string
	}{
		{jwt.ErrTokenMalformed, "malformed"},
		{jwt.ErrTokenSignatureInvalid, "bad signature or algorithm not allowed"},
		{jwt.ErrTokenExpired, "expired"},
		{jwt.ErrTokenNotValidYet, "not valid yet (nbf)"},
		{jwt.ErrTokenUsedBeforeIssued, "issued in the future (iat)"},
		{jwt.ErrTokenRequiredClaimMissing, "exp claim missing"},
		{jwt.ErrTokenInvalidAudience, "wrong audience (JWT_AUDIENCE)"},
		{jwt.ErrTokenInvalidIssuer, "wrong issuer (JWT_ISSUER)"},
		{jwt.ErrTokenUnverifiable, "unverifiable: algorithm not allowed or signing key unknown"},
	}
	for _, p := range problems {
		if errors.Is(err, p.err) {
			return p.phrase
		}
	}
	return "rejected"
}
