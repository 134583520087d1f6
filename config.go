package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Config is every setting of the daemon, read and validated once at start-up
// from the environment. README.md documents each variable in one table.
type Config struct {
	// ListenAddr is the public HTTP listener (LISTEN_HOST and PORT).
	ListenAddr string
	// Redis holds the connection options for the subscriber and the prober.
	Redis *redis.Options

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
	getenv func(string) string
	err    error
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

// loadConfig reads the environment through getenv and validates every value.
// The error names the first variable that is wrong.
func loadConfig(getenv func(string) string) (Config, error) {
	r := &envReader{getenv: getenv}
	var cfg Config

	port := r.intRange("PORT", 8084, 1, 65535)
	cfg.ListenAddr = net.JoinHostPort(r.str("LISTEN_HOST", ""), strconv.Itoa(port))

	cfg.Redis = r.redisOptions()

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

	cfg.MaxMessageBytes = r.intRange("MAX_MESSAGE_BYTES", 1<<20, 1, 64<<20)
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

	return cfg, r.err
}

// redisOptions builds the go-redis options from REDIS_URL, or from
// REDIS_HOST, REDIS_PORT, REDIS_USERNAME, REDIS_PASSWORD, REDIS_DB and
// REDIS_TLS when REDIS_URL is unset.
func (r *envReader) redisOptions() *redis.Options {
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
	return opts
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
