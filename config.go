package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
	"fanout/internal/redisx"
	"fanout/presence"
)

// Config is every setting of the daemon, read and validated once at start-up
// from the environment. README.md documents each variable in one table.
type Config struct {
	// ListenAddr is the public HTTP listener (LISTEN_HOST and PORT).
	ListenAddr string
	// Redis holds the connection options for the subscriber and the prober:
	// the address of a single Redis, and the credentials and TLS settings
	// of every data node with Sentinel or Cluster.
	Redis *redis.Options
	// SentinelAddrs, when set, selects go-redis's failover client: the
	// sentinels watching SentinelMaster (REDIS_SENTINEL_*).
	SentinelAddrs    []string
	SentinelMaster   string
	SentinelPassword string
	// ClusterAddrs, when set, selects go-redis's cluster client: the seed
	// nodes of a Redis Cluster (REDIS_CLUSTER_ADDRS).
	ClusterAddrs []string
	// PubSubSharded subscribes each user's channel with SSUBSCRIBE on the
	// node that owns it (PUBSUB_SHARDED; needs SUBSCRIBE_MODE=user).
	PubSubSharded bool

	// LogLevel and LogFormat shape the slog output.
	LogLevel  slog.Level
	LogFormat string

	// AllowedOrigins lists the exact browser origins accepted on /ws;
	// nil means any origin.
	AllowedOrigins []string

	// MaxMessageBytes is the largest published payload that is forwarded.
	MaxMessageBytes int
	// SendQueueSize and SendQueueBytes bound each connection's send queue.
	SendQueueSize  int
	SendQueueBytes int

	// PingInterval, PongWait and WriteWait are the keepalive timings.
	PingInterval time.Duration
	PongWait     time.Duration
	WriteWait    time.Duration

	// ShutdownTimeout bounds the graceful shutdown after SIGTERM or SIGINT.
	ShutdownTimeout time.Duration

	// ProbeInterval is how often the daemon publishes a probe to itself;
	// ProbeTimeout is how long it waits for the probe to come back.
	ProbeInterval time.Duration
	ProbeTimeout  time.Duration
	// RedisRetryMax caps the backoff between Redis reconnection attempts.
	RedisRetryMax time.Duration

	// AuthMode is authJWT, authLoopback (protected mode) or authNone.
	AuthMode string
	// JWT configures token verification when AuthMode is authJWT.
	JWT JWTConfig

	// MaxConnections bounds the open connections of the instance (0: no bound).
	MaxConnections int
	// MaxConnectionsPerUser bounds the open connections of one username.
	MaxConnectionsPerUser int
	// ConnectRatePerIP and ConnectBurstPerIP are the token bucket each client
	// address gets for /ws requests (rate 0: no limit).
	ConnectRatePerIP  float64
	ConnectBurstPerIP int
	// TrustedProxies are the peers whose X-Forwarded-For is believed
	// (loopback by default; nil: none).
	TrustedProxies []netip.Prefix

	// AdminAddr is the listener for stats and pprof ("" when off).
	AdminAddr string
	// AdminToken, when set, is required as a bearer token on AdminAddr.
	AdminToken string
	// Pprof mounts net/http/pprof on the admin listener.
	Pprof bool
	// Console serves the live console page at / on the public listener.
	Console bool

	// History keeps every event in its user's Redis Stream and gives it an
	// id (HISTORY); Retention is HISTORY_MAX_LEN and HISTORY_TTL.
	History   bool
	Retention history.Retention
	// ReplayConcurrency bounds the catch-ups reading history at once, and
	// ReplayPage the events each read takes (HISTORY_REPLAY_*).
	ReplayConcurrency int
	ReplayPage        int

	// SubscribeMode is subscribePattern (the seed's PSUBSCRIBE to every
	// user's channel) or subscribeUser (SUBSCRIBE to the channels of the
	// users connected here); SubscribeGrace is how long user mode keeps a
	// channel after its user's last connection leaves.
	SubscribeMode  string
	SubscribeGrace time.Duration

	// Presence keeps in Redis which users are connected here (PRESENCE);
	// PresenceTTL is how soon a dead instance's users stop counting,
	// PresenceGrace how long a user with no connection left waits before
	// it is announced offline, PresenceChannel where transitions go.
	Presence        bool
	PresenceTTL     time.Duration
	PresenceGrace   time.Duration
	PresenceChannel string
	// ReceiptsChannel is where changes of users' seen ids are published.
	ReceiptsChannel string
}

// The values of SUBSCRIBE_MODE.
const (
	subscribePattern = "pattern"
	subscribeUser    = "user"
)

// The values of AUTH_MODE.
const (
	// authJWT requires a valid JWT on /ws.
	authJWT = "jwt"
	// authLoopback is protected mode: no authentication, loopback peers only.
	authLoopback = "loopback"
	// authNone accepts anyone who can reach the port.
	authNone = "none"
)

// JWTConfig is how /ws tokens are verified and read.
type JWTConfig struct {
	// Exactly one key source is set: Secret (HMAC), PublicKey (from
	// JWT_PUBLIC_KEY_FILE) or JWKSURL.
	Secret    []byte
	PublicKey crypto.PublicKey
	JWKSURL   string
	// JWKSRefresh is how often the JWKS is fetched again.
	JWKSRefresh time.Duration
	// Methods are the only signing algorithms accepted, pinned by the key.
	Methods []string
	// Issuer and Audience, when set, must match the token's iss and aud.
	Issuer   string
	Audience string
	// UsernameClaim names the claim holding the username; GroupsClaim, when
	// set, names a claim listing further channels the holder may watch.
	UsernameClaim string
	GroupsClaim   string
	// Cookie, when set, is the cookie a browser may carry the token in.
	Cookie string
	// Leeway tolerates clock skew on exp and nbf.
	Leeway time.Duration
}

// configError names the environment variable whose value is wrong.
type configError struct {
	name  string
	value string
	why   string
}

func (e *configError) Error() string {
	if e.value == "" {
		return fmt.Sprintf("%s: %s", e.name, e.why)
	}
	return fmt.Sprintf("%s=%q: %s", e.name, e.value, e.why)
}

// envReader reads variables and remembers the first error, so loadConfig
// reads like the table it implements.
type envReader struct {
	// lookup is os.LookupEnv or a test's: it tells a variable set to
	// nothing from one not set, which matters for redisDeploymentVariables.
	lookup func(string) (string, bool)
	err    error
}

// getenv returns the variable's value, "" when it is unset.
func (r *envReader) getenv(name string) string {
	v, _ := r.lookup(name)
	return v
}

func (r *envReader) fail(name, value, why string) {
	if r.err == nil {
		r.err = &configError{name: name, value: value, why: why}
	}
}

func (r *envReader) str(name, def string) string {
	if v := strings.TrimSpace(r.getenv(name)); v != "" {
		return v
	}
	return def
}

func (r *envReader) intRange(name string, def, lo, hi int) int {
	v := strings.TrimSpace(r.getenv(name))
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		r.fail(name, v, fmt.Sprintf("must be a whole number from %d to %d", lo, hi))
		return def
	}
	return n
}

func (r *envReader) duration(name string, def time.Duration) time.Duration {
	v := strings.TrimSpace(r.getenv(name))
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		r.fail(name, v, "must be a positive duration such as 500ms, 10s or 1m")
		return def
	}
	return d
}

func (r *envReader) boolean(name string, def bool) bool {
	v := strings.TrimSpace(r.getenv(name))
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		r.fail(name, v, "must be true or false")
		return def
	}
	return b
}

// loadConfig reads the environment through lookup (os.LookupEnv) and
// validates every value. The error names the first variable that is wrong.
func loadConfig(lookup func(string) (string, bool)) (Config, error) {
	r := &envReader{lookup: lookup}
	var cfg Config

	port := r.intRange("PORT", 8084, 1, 65535)
	cfg.ListenAddr = net.JoinHostPort(r.str("LISTEN_HOST", ""), strconv.Itoa(port))

	cfg.Redis = r.redisOptions()
	r.redisDeployment(&cfg)

	switch level := strings.ToLower(r.str("LOG_LEVEL", "info")); level {
	case "debug":
		cfg.LogLevel = slog.LevelDebug
	case "info":
		cfg.LogLevel = slog.LevelInfo
	case "warn", "warning":
		cfg.LogLevel = slog.LevelWarn
	case "error":
		cfg.LogLevel = slog.LevelError
	default:
		r.fail("LOG_LEVEL", level, "must be debug, info, warn or error")
	}
	cfg.LogFormat = strings.ToLower(r.str("LOG_FORMAT", "text"))
	if cfg.LogFormat != "text" && cfg.LogFormat != "json" {
		r.fail("LOG_FORMAT", cfg.LogFormat, "must be text or json")
	}

	cfg.AllowedOrigins = r.origins("ALLOWED_ORIGINS")

	cfg.MaxMessageBytes = r.maxMessageBytes()
	cfg.SendQueueSize = r.intRange("SEND_QUEUE_SIZE", 4096, 1, 1<<20)
	cfg.SendQueueBytes = r.intRange("SEND_QUEUE_BYTES", 1<<20, 1024, 1<<30)

	cfg.PingInterval = r.duration("PING_INTERVAL", 54*time.Second)
	cfg.PongWait = r.duration("PONG_WAIT", 60*time.Second)
	cfg.WriteWait = r.duration("WRITE_WAIT", 10*time.Second)
	if r.err == nil && cfg.PingInterval >= cfg.PongWait {
		r.fail("PING_INTERVAL", r.getenv("PING_INTERVAL"), "must be shorter than PONG_WAIT, or clients time out between pings")
	}
	cfg.ShutdownTimeout = r.duration("SHUTDOWN_TIMEOUT", 10*time.Second)

	cfg.ProbeInterval = r.duration("PROBE_INTERVAL", 3*time.Second)
	cfg.ProbeTimeout = r.duration("PROBE_TIMEOUT", 5*time.Second)
	cfg.RedisRetryMax = r.duration("REDIS_RETRY_MAX", 5*time.Second)

	cfg.AuthMode, cfg.JWT = r.auth()
	if r.err == nil && cfg.JWT.Cookie != "" && cfg.AllowedOrigins == nil {
		r.fail("ALLOWED_ORIGINS", r.str("ALLOWED_ORIGINS", "*"), "must list your frontend's origins when JWT_COOKIE is set; with * any website could open a WebSocket with your users' cookie (cross-site WebSocket hijacking)")
	}

	cfg.MaxConnections = r.intRange("MAX_CONNECTIONS", 0, 0, 1<<30)
	cfg.MaxConnectionsPerUser = r.intRange("MAX_CONNECTIONS_PER_USER", 32, 0, 1<<30)
	cfg.ConnectRatePerIP = r.float("CONNECT_RATE_PER_IP", 20, 0, 1e6)
	cfg.ConnectBurstPerIP = r.intRange("CONNECT_BURST_PER_IP", 100, 1, 1<<30)
	cfg.TrustedProxies = r.trustedProxies("TRUSTED_PROXIES")

	cfg.AdminAddr, cfg.AdminToken = r.admin()
	cfg.Pprof = r.boolean("PPROF", false)
	cfg.Console = r.onOff("CONSOLE", true)
	cfg.History = r.onOff("HISTORY", true)
	cfg.Retention.MaxLen = r.retentionMaxLen("HISTORY_MAX_LEN")
	cfg.Retention.TTL = r.retentionTTL("HISTORY_TTL")
	cfg.ReplayConcurrency = r.intRange("HISTORY_REPLAY_CONCURRENCY", 32, 1, 1<<16)
	cfg.ReplayPage = r.intRange("HISTORY_REPLAY_PAGE", 200, 1, 10000)
	switch cfg.SubscribeMode = strings.ToLower(r.str("SUBSCRIBE_MODE", subscribePattern)); cfg.SubscribeMode {
	case subscribePattern, subscribeUser:
	default:
		r.fail("SUBSCRIBE_MODE", cfg.SubscribeMode, "must be pattern (every instance reads every user's events) or user (each instance reads only its connected users' events)")
	}
	cfg.SubscribeGrace = r.duration("SUBSCRIBE_GRACE", 5*time.Second)
	cfg.PubSubSharded = r.boolean("PUBSUB_SHARDED", false)
	if cfg.PubSubSharded && cfg.SubscribeMode != subscribeUser {
		r.fail("PUBSUB_SHARDED", r.getenv("PUBSUB_SHARDED"), "needs SUBSCRIBE_MODE=user: sharded channels are subscribed one by one, never by pattern")
	}

	cfg.Presence = r.onOff("PRESENCE", true)
	cfg.PresenceTTL = r.duration("PRESENCE_TTL", 15*time.Second)
	if cfg.PresenceTTL < minPresenceTTL {
		r.fail("PRESENCE_TTL", r.getenv("PRESENCE_TTL"), "must be at least "+minPresenceTTL.String())
	}
	cfg.PresenceGrace = r.duration("PRESENCE_GRACE", 5*time.Second)
	cfg.PresenceChannel = r.str("PRESENCE_CHANNEL", presence.DefaultChannel)
	cfg.ReceiptsChannel = r.str("RECEIPTS_CHANNEL", history.DefaultReceiptsChannel)

	if r.err == nil && cfg.Pprof && cfg.AdminAddr == "" {
		r.fail("PPROF", r.getenv("PPROF"), "needs the admin listener; unset ADMIN_ADDR=off")
	}

	return cfg, r.err
}

// maxMessageBytes reads MAX_MESSAGE_BYTES, the largest payload forwarded.
func (r *envReader) maxMessageBytes() int {
	return r.intRange("MAX_MESSAGE_BYTES", 1<<20, 1, 64<<20)
}

// onOff reads a switch: on, true or 1; off, false or 0.
func (r *envReader) onOff(name string, def bool) bool {
	switch v := strings.ToLower(r.str(name, "")); v {
	case "":
		return def
	case "on", "true", "1":
		return true
	case "off", "false", "0":
		return false
	default:
		r.fail(name, v, "must be on or off")
		return def
	}
}

func (r *envReader) float(name string, def, lo, hi float64) float64 {
	v := strings.TrimSpace(r.getenv(name))
	if v == "" {
		return def
	}
	f, err := strconv.ParseFloat(v, 64)
	// Written so that NaN, which ParseFloat accepts and which fails every
	// comparison, is out of range too.
	if err != nil || !(f >= lo && f <= hi) {
		r.fail(name, v, fmt.Sprintf("must be a number from %g to %g", lo, hi))
		return def
	}
	return f
}

// nonNegativeDuration is duration that also accepts 0.
func (r *envReader) nonNegativeDuration(name string, def, hi time.Duration) time.Duration {
	v := strings.TrimSpace(r.getenv(name))
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 || d > hi {
		r.fail(name, v, fmt.Sprintf("must be a duration from 0s to %s", hi))
		return def
	}
	return d
}

// defaultTrustedProxies is TRUSTED_PROXIES when it is unset: loopback and
// the private networks, so that the proxies of the usual deployments are
// believed as they are: the README's nginx on the same host, nginx in
// another container of a Docker network, a Kubernetes ingress. A client on
// a private network that reaches the daemon directly can then choose its
// own per-address bucket; listing the proxies closes that.
var defaultTrustedProxies = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("fc00::/7"),
}

// trustedProxies parses a comma-separated list of IP addresses and CIDR
// prefixes. Unset means loopback and the private networks
// (defaultTrustedProxies); none means no
// proxy is trusted and yields nil.
func (r *envReader) trustedProxies(name string) []netip.Prefix {
	v := r.str(name, "")
	switch {
	case v == "":
		return slices.Clone(defaultTrustedProxies)
	case strings.EqualFold(v, "none"):
		return nil
	}
	var list []netip.Prefix
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		if p, err := netip.ParsePrefix(item); err == nil {
			list = append(list, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(item)
		if err != nil {
			r.fail(name, item, "each entry must be an IP address or a CIDR prefix such as 10.0.0.0/8 (or the whole value none, to trust no proxy)")
			return nil
		}
		a = a.Unmap()
		list = append(list, netip.PrefixFrom(a, a.BitLen()))
	}
	if len(list) == 0 {
		r.fail(name, v, "lists no address; use none to trust no proxy")
	}
	return list
}

// auth reads AUTH_MODE and the JWT_* variables. Without AUTH_MODE, a JWT key
// source selects authJWT and its absence selects protected mode.
func (r *envReader) auth() (string, JWTConfig) {
	var j JWTConfig
	secret := r.getenv("JWT_SECRET")
	keyFile := r.str("JWT_PUBLIC_KEY_FILE", "")
	j.JWKSURL = r.str("JWT_JWKS_URL", "")
	var sources []string
	for name, v := range map[string]string{"JWT_SECRET": secret, "JWT_PUBLIC_KEY_FILE": keyFile, "JWT_JWKS_URL": j.JWKSURL} {
		if v != "" {
			sources = append(sources, name)
		}
	}
	slices.Sort(sources)

	mode := strings.ToLower(r.str("AUTH_MODE", ""))
	switch mode {
	case "":
		mode = authLoopback
		if len(sources) > 0 {
			mode = authJWT
		}
	case authJWT:
		if len(sources) == 0 {
			r.fail("AUTH_MODE", mode, "needs one of JWT_SECRET, JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL")
		}
	case authNone, authLoopback:
		if len(sources) > 0 {
			r.fail("AUTH_MODE", mode, fmt.Sprintf("turns authentication off, but %s is set; unset one of them", sources[0]))
		}
	default:
		r.fail("AUTH_MODE", mode, "must be jwt, loopback or none")
	}
	if len(sources) > 1 {
		r.fail(sources[1], "", fmt.Sprintf("cannot be combined with %s; set exactly one JWT key source", sources[0]))
	}
	if mode != authJWT || r.err != nil {
		return mode, j
	}

	switch {
	case secret != "":
		if len(secret) < 32 {
			// The secret itself is never echoed.
			r.fail("JWT_SECRET", "", fmt.Sprintf("is %d bytes; HMAC keys must be at least 32 bytes (generate one with: openssl rand -base64 32)", len(secret)))
		}
		j.Secret = []byte(secret)
		j.Methods = []string{"HS256", "HS384", "HS512"}
	case keyFile != "":
		key, methods, err := readPublicKey(keyFile)
		if err != nil {
			r.fail("JWT_PUBLIC_KEY_FILE", keyFile, err.Error())
		}
		j.PublicKey, j.Methods = key, methods
	default:
		if u, err := url.Parse(j.JWKSURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			r.fail("JWT_JWKS_URL", j.JWKSURL, "must be an http:// or https:// URL")
		}
		// A JWKS never holds a shared secret: HMAC algorithms stay out.
		j.Methods = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
	}
	j.JWKSRefresh = r.duration("JWT_JWKS_REFRESH", 15*time.Minute)
	j.Issuer = r.str("JWT_ISSUER", "")
	j.Audience = r.str("JWT_AUDIENCE", "")
	j.UsernameClaim = r.str("JWT_USERNAME_CLAIM", "sub")
	j.GroupsClaim = r.str("JWT_GROUPS_CLAIM", "")
	j.Cookie = r.str("JWT_COOKIE", "")
	if j.Cookie != "" && !validCookieName(j.Cookie) {
		r.fail("JWT_COOKIE", j.Cookie, "is not a valid cookie name")
	}
	j.Leeway = r.nonNegativeDuration("JWT_LEEWAY", 0, 5*time.Minute)
	return mode, j
}

// readPublicKey reads a PEM public key (or certificate) and returns it with
// the signing algorithms its type allows, so that a token can never choose
// an algorithm of another family.
func readPublicKey(path string) (crypto.PublicKey, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot read: %v", errors.Unwrap(err))
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, nil, errors.New("holds no PEM block")
	}
	var key any
	switch block.Type {
	case "CERTIFICATE":
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("bad certificate: %v", err)
		}
		key = cert.PublicKey
	case "RSA PUBLIC KEY":
		key, err = x509.ParsePKCS1PublicKey(block.Bytes)
	case "PUBLIC KEY":
		key, err = x509.ParsePKIXPublicKey(block.Bytes)
	default:
		return nil, nil, fmt.Errorf("holds a %q PEM block; give the PUBLIC KEY (never the private key)", block.Type)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("bad public key: %v", err)
	}
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, nil, fmt.Errorf("RSA key is %d bits; at least 2048 are required", k.N.BitLen())
		}
		return k, []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}, nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return k, []string{"ES256"}, nil
		case elliptic.P384():
			return k, []string{"ES384"}, nil
		case elliptic.P521():
			return k, []string{"ES512"}, nil
		}
		return nil, nil, fmt.Errorf("ECDSA curve %s is not supported; use P-256, P-384 or P-521", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return k, []string{"EdDSA"}, nil
	}
	return nil, nil, fmt.Errorf("key type %T is not supported; use RSA, ECDSA or Ed25519", key)
}

// validCookieName reports whether name is an RFC 6265 token.
func validCookieName(name string) bool {
	for i := 0; i < len(name); i++ {
		b := name[i]
		if b <= ' ' || b >= 0x7f || strings.IndexByte("()<>@,;:\\\"/[]?={}", b) >= 0 {
			return false
		}
	}
	return true
}

// admin reads ADMIN_ADDR and ADMIN_TOKEN. An admin listener reachable from
// the network needs a token.
func (r *envReader) admin() (addr, token string) {
	addr = r.str("ADMIN_ADDR", "127.0.0.1:9084")
	// Trimmed like the token clients send: a secret file often ends in a newline.
	token = strings.TrimSpace(r.getenv("ADMIN_TOKEN"))
	if token != "" && len(token) < 16 {
		r.fail("ADMIN_TOKEN", "", fmt.Sprintf("is %d characters; use at least 16 (for example: openssl rand -hex 16)", len(token)))
	}
	if strings.EqualFold(addr, "off") {
		return "", token
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		r.fail("ADMIN_ADDR", addr, "must be host:port (for example 127.0.0.1:9084) or off")
		return addr, token
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		r.fail("ADMIN_ADDR", addr, "has a bad port")
		return addr, token
	}
	if token == "" && !loopbackHost(host) {
		r.fail("ADMIN_ADDR", addr, "is reachable from the network; set ADMIN_TOKEN, or listen on 127.0.0.1")
	}
	return addr, token
}

// loopbackHost reports whether a listen host only accepts local peers.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// redisDeploymentVariables say which Redis the daemon talks to. Set to
// nothing, one of them is a mistake, never a request for the default: an
// empty REDIS_CLUSTER_ADDRS would otherwise start a daemon against one
// Redis on localhost.
var redisDeploymentVariables = []string{"REDIS_URL", "REDIS_HOST", "REDIS_SENTINEL_ADDRS", "REDIS_SENTINEL_MASTER", "REDIS_CLUSTER_ADDRS"}

// redisOptions builds the go-redis options from REDIS_URL, or from
// REDIS_HOST, REDIS_PORT, REDIS_USERNAME, REDIS_PASSWORD, REDIS_DB and
// REDIS_TLS when REDIS_URL is unset.
func (r *envReader) redisOptions() *redis.Options {
	for _, name := range redisDeploymentVariables {
		if v, set := r.lookup(name); set && strings.TrimSpace(v) == "" {
			r.fail(name, "", "is set but empty: give it a value, or unset it (an empty one is usually a shell variable a compose file, manifest or env file expected and did not get)")
			return &redis.Options{}
		}
	}
	var opts *redis.Options
	if url := r.str("REDIS_URL", ""); url != "" {
		parsed, err := redis.ParseURL(url)
		if err != nil {
			// The URL may hold a password: never echo it.
			r.fail("REDIS_URL", "", "must be redis://[user:password@]host:port[/db], rediss://… or unix://…")
			return &redis.Options{}
		}
		opts = parsed
		if opts.Password == "" {
			opts.Password = r.getenv("REDIS_PASSWORD")
		}
	} else {
		host := r.str("REDIS_HOST", "localhost")
		port := r.intRange("REDIS_PORT", 6379, 1, 65535)
		opts = &redis.Options{
			Addr:     net.JoinHostPort(host, strconv.Itoa(port)),
			Username: r.getenv("REDIS_USERNAME"),
			Password: r.getenv("REDIS_PASSWORD"),
			DB:       r.intRange("REDIS_DB", 0, 0, 1<<16),
		}
		if r.boolean("REDIS_TLS", false) {
			opts.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
		}
	}

	caFile := r.str("REDIS_TLS_CA_FILE", "")
	skipVerify := r.boolean("REDIS_TLS_SKIP_VERIFY", false)
	if (caFile != "" || skipVerify) && opts.TLSConfig == nil {
		r.fail("REDIS_TLS", r.getenv("REDIS_TLS"), "must be true (or REDIS_URL must start with rediss://) when REDIS_TLS_CA_FILE or REDIS_TLS_SKIP_VERIFY is set")
		return opts
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			r.fail("REDIS_TLS_CA_FILE", caFile, fmt.Sprintf("cannot read: %v", errors.Unwrap(err)))
			return opts
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			r.fail("REDIS_TLS_CA_FILE", caFile, "holds no PEM certificate")
			return opts
		}
		opts.TLSConfig.RootCAs = pool
	}
	if skipVerify {
		opts.TLSConfig.InsecureSkipVerify = true
	}
	if opts.TLSConfig != nil {
		// A Redis without TLS is named within seconds, not after every
		// dial timed out.
		variable := "REDIS_TLS"
		if r.str("REDIS_URL", "") != "" {
			variable = "REDIS_URL (rediss://)"
		}
		opts.Dialer = redisx.TLSDialer(opts.TLSConfig, variable)
	}
	return opts
}

// redisDeployment reads the Sentinel and Cluster settings: at most one of
// the two, each with a list of host:port.
func (r *envReader) redisDeployment(cfg *Config) {
	cfg.SentinelAddrs = r.addrList("REDIS_SENTINEL_ADDRS")
	cfg.SentinelMaster = r.str("REDIS_SENTINEL_MASTER", "")
	cfg.SentinelPassword = r.getenv("REDIS_SENTINEL_PASSWORD")
	cfg.ClusterAddrs = r.addrList("REDIS_CLUSTER_ADDRS")
	switch {
	case cfg.SentinelAddrs != nil && cfg.ClusterAddrs != nil:
		r.fail("REDIS_CLUSTER_ADDRS", r.getenv("REDIS_CLUSTER_ADDRS"), "cannot be set together with REDIS_SENTINEL_ADDRS: Redis is either a Sentinel-watched master or a Cluster; unset one")
	case cfg.SentinelAddrs != nil && cfg.SentinelMaster == "":
		r.fail("REDIS_SENTINEL_MASTER", "", "must name the master the sentinels watch (as in their `sentinel monitor <name> …` line) when REDIS_SENTINEL_ADDRS is set")
	case cfg.SentinelAddrs == nil && cfg.SentinelMaster != "":
		r.fail("REDIS_SENTINEL_ADDRS", "", "must list the sentinels (host:port,host:port,…) when REDIS_SENTINEL_MASTER is set")
	case cfg.ClusterAddrs != nil && cfg.Redis.DB != 0:
		r.fail("REDIS_DB", strconv.Itoa(cfg.Redis.DB), "must be 0 with REDIS_CLUSTER_ADDRS: a Redis Cluster has only database 0")
	}
}

// addrList parses a comma-separated list of host:port; nil when the
// variable is unset. A list that names no address is an error.
func (r *envReader) addrList(name string) []string {
	v := r.getenv(name)
	if strings.TrimSpace(v) == "" {
		return nil
	}
	var list []string
	for _, a := range strings.Split(v, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		host, port, err := net.SplitHostPort(a)
		if n, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
			r.fail(name, a, "each address must be host:port (for example 10.0.0.5:26379)")
			return []string{}
		}
		list = append(list, a)
	}
	if len(list) == 0 {
		r.fail(name, v, "lists no address; give host:port[,host:port…] or unset it")
		return []string{}
	}
	return list
}

// origins parses a comma-separated list of exact origins; "*" (the default)
// accepts any origin and yields nil.
func (r *envReader) origins(name string) []string {
	v := r.str(name, "*")
	var list []string
	for _, o := range strings.Split(v, ",") {
		o = strings.TrimRight(strings.TrimSpace(o), "/")
		switch {
		case o == "":
			continue
		case o == "*":
			return nil
		case !strings.HasPrefix(o, "http://") && !strings.HasPrefix(o, "https://"):
			r.fail(name, o, "each origin must be * or start with http:// or https:// (for example https://app.example.com)")
			return nil
		}
		list = append(list, strings.ToLower(o))
	}
	if len(list) == 0 {
		r.fail(name, v, "lists no origin; use * to accept any")
	}
	return list
}
