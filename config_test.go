package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// envOf is an environment of vars for loadConfig: a variable vars holds,
// even as "", is set.
func envOf(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := vars[k]
		return v, ok
	}
}

func TestConfigDefaultsMatchTheSeed(t *testing.T) {
	cfg, err := loadConfig(envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"listen", cfg.ListenAddr, ":8084"},
		{"redis addr", cfg.Redis.Addr, "localhost:6379"},
		{"redis password", cfg.Redis.Password, ""},
		{"redis db", cfg.Redis.DB, 0},
		{"tls", cfg.Redis.TLSConfig == nil, true},
		{"log level", cfg.LogLevel, slog.LevelInfo},
		{"log format", cfg.LogFormat, "text"},
		{"origins", cfg.AllowedOrigins == nil, true},
		{"max message", cfg.MaxMessageBytes, 1 << 20},
		{"queue bytes", cfg.SendQueueBytes, 1 << 20},
		{"queue size", cfg.SendQueueSize, 4096},
		{"ping", cfg.PingInterval, 54 * time.Second},
		{"pong", cfg.PongWait, 60 * time.Second},
		{"write", cfg.WriteWait, 10 * time.Second},
		{"shutdown", cfg.ShutdownTimeout, 10 * time.Second},
		{"history", cfg.History, true},
		{"history max len", cfg.Retention.MaxLen, int64(1000)},
		{"history ttl", cfg.Retention.TTL, time.Hour},
		{"replay concurrency", cfg.ReplayConcurrency, 32},
		{"replay page", cfg.ReplayPage, 200},
		{"subscribe mode", cfg.SubscribeMode, "pattern"},
		{"subscribe grace", cfg.SubscribeGrace, 5 * time.Second},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestConfigReadsEveryVariable(t *testing.T) {
	cfg, err := loadConfig(envOf(map[string]string{
		"PORT": "9000", "LISTEN_HOST": "127.0.0.1",
		"REDIS_HOST": "redis.internal", "REDIS_PORT": "6380", "REDIS_PASSWORD": "s3cret",
		"REDIS_USERNAME": "fanout", "REDIS_DB": "2", "REDIS_TLS": "true",
		"LOG_LEVEL": "DEBUG", "LOG_FORMAT": "json",
		"ALLOWED_ORIGINS":   "https://a.example.com, http://localhost:3000/",
		"MAX_MESSAGE_BYTES": "2048", "SEND_QUEUE_SIZE": "10", "SEND_QUEUE_BYTES": "4096",
		"PING_INTERVAL": "5s", "PONG_WAIT": "7s", "WRITE_WAIT": "1s", "SHUTDOWN_TIMEOUT": "3s",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ListenAddr != "127.0.0.1:9000" || cfg.Redis.Addr != "redis.internal:6380" ||
		cfg.Redis.Password != "s3cret" || cfg.Redis.Username != "fanout" || cfg.Redis.DB != 2 ||
		cfg.Redis.TLSConfig == nil || cfg.Redis.TLSConfig.ServerName != "redis.internal" ||
		cfg.LogLevel != slog.LevelDebug || cfg.LogFormat != "json" ||
		strings.Join(cfg.AllowedOrigins, " ") != "https://a.example.com http://localhost:3000" ||
		cfg.MaxMessageBytes != 2048 || cfg.SendQueueSize != 10 || cfg.SendQueueBytes != 4096 ||
		cfg.PingInterval != 5*time.Second || cfg.PongWait != 7*time.Second ||
		cfg.WriteWait != time.Second || cfg.ShutdownTimeout != 3*time.Second {
		t.Fatalf("config not read as set: %+v", cfg)
	}
}

func TestConfigRedisURLWins(t *testing.T) {
	cfg, err := loadConfig(envOf(map[string]string{
		"REDIS_URL": "rediss://user:pw@cache.example.com:6390/3", "REDIS_HOST": "ignored",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Redis.Addr != "cache.example.com:6390" || cfg.Redis.Username != "user" ||
		cfg.Redis.Password != "pw" || cfg.Redis.DB != 3 || cfg.Redis.TLSConfig == nil {
		t.Fatalf("REDIS_URL not applied: %+v", cfg.Redis)
	}
	cfg, err = loadConfig(envOf(map[string]string{"REDIS_URL": "redis://cache:6379", "REDIS_PASSWORD": "from-secret"}))
	if err != nil || cfg.Redis.Password != "from-secret" {
		t.Fatalf("REDIS_PASSWORD not used with a password-less REDIS_URL: %v %q", err, cfg.Redis.Password)
	}
}

func TestConfigBadValuesNameTheVariable(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"PORT": "abc"}, `PORT="abc"`},
		{map[string]string{"PORT": "0"}, `PORT="0"`},
		{map[string]string{"PORT": "70000"}, `PORT="70000"`},
		{map[string]string{"REDIS_PORT": "99999"}, `REDIS_PORT="99999"`},
		{map[string]string{"REDIS_DB": "-1"}, `REDIS_DB="-1"`},
		{map[string]string{"REDIS_URL": "http://user:hunter2@x"}, "REDIS_URL: must be"},
		{map[string]string{"REDIS_TLS": "yes please"}, `REDIS_TLS="yes please"`},
		{map[string]string{"REDIS_TLS_CA_FILE": notPEM}, "REDIS_TLS"},
		{map[string]string{"REDIS_TLS": "true", "REDIS_TLS_CA_FILE": notPEM}, "holds no PEM"},
		{map[string]string{"REDIS_TLS": "true", "REDIS_TLS_CA_FILE": filepath.Join(dir, "none")}, "cannot read"},
		{map[string]string{"LOG_LEVEL": "loud"}, `LOG_LEVEL="loud"`},
		{map[string]string{"LOG_FORMAT": "xml"}, `LOG_FORMAT="xml"`},
		{map[string]string{"ALLOWED_ORIGINS": "example.com"}, `ALLOWED_ORIGINS="example.com"`},
		{map[string]string{"ALLOWED_ORIGINS": ","}, `ALLOWED_ORIGINS=","`},
		{map[string]string{"MAX_MESSAGE_BYTES": "0"}, "MAX_MESSAGE_BYTES"},
		{map[string]string{"SEND_QUEUE_SIZE": "many"}, "SEND_QUEUE_SIZE"},
		{map[string]string{"SEND_QUEUE_BYTES": "10"}, "SEND_QUEUE_BYTES"},
		{map[string]string{"PING_INTERVAL": "soon"}, `PING_INTERVAL="soon"`},
		{map[string]string{"PONG_WAIT": "-1s"}, `PONG_WAIT="-1s"`},
		{map[string]string{"PING_INTERVAL": "90s"}, "shorter than PONG_WAIT"},
		{map[string]string{"WRITE_WAIT": "0"}, "WRITE_WAIT"},
		{map[string]string{"SHUTDOWN_TIMEOUT": "x"}, "SHUTDOWN_TIMEOUT"},
		{map[string]string{"PROBE_INTERVAL": "x"}, "PROBE_INTERVAL"},
		{map[string]string{"PROBE_TIMEOUT": "x"}, "PROBE_TIMEOUT"},
		{map[string]string{"REDIS_RETRY_MAX": "x"}, "REDIS_RETRY_MAX"},
		{map[string]string{"HISTORY": "maybe"}, `HISTORY="maybe"`},
		{map[string]string{"HISTORY_MAX_LEN": "0"}, `HISTORY_MAX_LEN="0"`},
		{map[string]string{"HISTORY_TTL": "forever"}, `HISTORY_TTL="forever"`},
		{map[string]string{"HISTORY_TTL": "10ms"}, "HISTORY_TTL"},
		{map[string]string{"HISTORY_REPLAY_CONCURRENCY": "0"}, "HISTORY_REPLAY_CONCURRENCY"},
		{map[string]string{"HISTORY_REPLAY_PAGE": "lots"}, "HISTORY_REPLAY_PAGE"},
		{map[string]string{"CONSOLE": "maybe"}, `CONSOLE="maybe"`},
		{map[string]string{"SUBSCRIBE_MODE": "channel"}, `SUBSCRIBE_MODE="channel"`},
		{map[string]string{"SUBSCRIBE_GRACE": "0"}, `SUBSCRIBE_GRACE="0"`},
	}
	for _, tc := range cases {
		_, err := loadConfig(envOf(tc.env))
		if err == nil {
			t.Errorf("%v accepted", tc.env)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, tc.want) || strings.Contains(msg, "\n") {
			t.Errorf("%v: error %q, want one line with %s", tc.env, msg, tc.want)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error leaks the Redis password: %q", err)
		}
	}
}

// writePEM writes one PEM block of typ holding der into dir and returns its path.
func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// writePublicKeyPEM writes pub as a PKIX "PUBLIC KEY" PEM file into dir.
func writePublicKeyPEM(t *testing.T, dir, name string, pub any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, dir, name, "PUBLIC KEY", der)
}

func TestConfigBadAuthAndLimitValuesNameTheVariable(t *testing.T) {
	dir := t.TempDir()
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	privateKeyFile := writePEM(t, dir, "private.pem", "PRIVATE KEY", pkcs8)
	smallRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	smallRSAFile := writePublicKeyPEM(t, dir, "rsa1024.pem", &smallRSA.PublicKey)
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p224File := writePublicKeyPEM(t, dir, "p224.pem", &p224.PublicKey)
	notPEM := filepath.Join(dir, "key.txt")
	if err := os.WriteFile(notPEM, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}

	// Secrets that must never appear in an error.
	const shortSecret = "short-secret-hunter2"
	const longSecret = "a-long-enough-secret-hunter2-0123456789"
	const shortToken = "hunter2"
	cases := []struct {
		env  map[string]string
		want []string
	}{
		{map[string]string{"JWT_SECRET": shortSecret}, []string{"JWT_SECRET", "20 bytes", "at least 32"}},
		{map[string]string{"JWT_SECRET": strings.Repeat("x", 31)}, []string{"JWT_SECRET", "31 bytes"}},
		{map[string]string{"JWT_SECRET": longSecret, "JWT_JWKS_URL": "https://idp.example.com/jwks"}, []string{"JWT_SECRET", "JWT_JWKS_URL", "exactly one"}},
		{map[string]string{"JWT_PUBLIC_KEY_FILE": notPEM, "JWT_JWKS_URL": "https://idp.example.com/jwks"}, []string{"JWT_PUBLIC_KEY_FILE", "JWT_JWKS_URL", "exactly one"}},
		{map[string]string{"AUTH_MODE": "bogus"}, []string{`AUTH_MODE="bogus"`, "jwt, loopback or none"}},
		{map[string]string{"AUTH_MODE": "jwt"}, []string{`AUTH_MODE="jwt"`, "JWT_SECRET, JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL"}},
		{map[string]string{"AUTH_MODE": "none", "JWT_SECRET": longSecret}, []string{`AUTH_MODE="none"`, "JWT_SECRET is set"}},
		{map[string]string{"AUTH_MODE": "loopback", "JWT_JWKS_URL": "https://idp.example.com/jwks"}, []string{`AUTH_MODE="loopback"`, "JWT_JWKS_URL is set"}},
		{map[string]string{"JWT_SECRET": longSecret, "JWT_COOKIE": "session"}, []string{"ALLOWED_ORIGINS", "JWT_COOKIE"}},
		{map[string]string{"JWT_SECRET": longSecret, "JWT_COOKIE": "session", "ALLOWED_ORIGINS": "*"}, []string{`ALLOWED_ORIGINS="*"`, "JWT_COOKIE"}},
		{map[string]string{"JWT_SECRET": longSecret, "JWT_COOKIE": "a b", "ALLOWED_ORIGINS": "https://app.example.com"}, []string{`JWT_COOKIE="a b"`}},
		{map[string]string{"JWT_PUBLIC_KEY_FILE": filepath.Join(dir, "missing.pem")}, []string{"JWT_PUBLIC_KEY_FILE", "missing.pem", "cannot read"}},
		{map[string]string{"JWT_PUBLIC_KEY_FILE": notPEM}, []string{"JWT_PUBLIC_KEY_FILE", "holds no PEM"}},
		{map[string]string{"JWT_PUBLIC_KEY_FILE": privateKeyFile}, []string{"JWT_PUBLIC_KEY_FILE", `"PRIVATE KEY"`, "never the private key"}},
		{map[string]string{"JWT_PUBLIC_KEY_FILE": smallRSAFile}, []string{"JWT_PUBLIC_KEY_FILE", "1024 bits", "2048"}},
		{map[string]string{"JWT_PUBLIC_KEY_FILE": p224File}, []string{"JWT_PUBLIC_KEY_FILE", "P-224", "not supported"}},
		{map[string]string{"JWT_JWKS_URL": "ftp://x"}, []string{`JWT_JWKS_URL="ftp://x"`, "http"}},
		{map[string]string{"JWT_JWKS_URL": "https://"}, []string{"JWT_JWKS_URL"}},
		{map[string]string{"JWT_SECRET": longSecret, "JWT_LEEWAY": "10m"}, []string{`JWT_LEEWAY="10m"`, "5m0s"}},
		{map[string]string{"JWT_SECRET": longSecret, "JWT_LEEWAY": "-1s"}, []string{`JWT_LEEWAY="-1s"`}},
		{map[string]string{"JWT_JWKS_URL": "https://idp.example.com/jwks", "JWT_JWKS_REFRESH": "0"}, []string{`JWT_JWKS_REFRESH="0"`}},
		{map[string]string{"TRUSTED_PROXIES": "not-an-ip"}, []string{`TRUSTED_PROXIES="not-an-ip"`, "CIDR"}},
		{map[string]string{"TRUSTED_PROXIES": "10.0.0.0/8, 300.1.2.3"}, []string{`TRUSTED_PROXIES="300.1.2.3"`}},
		{map[string]string{"TRUSTED_PROXIES": "10.0.0.0/33"}, []string{`TRUSTED_PROXIES="10.0.0.0/33"`}},
		{map[string]string{"TRUSTED_PROXIES": "none, 10.0.0.0/8"}, []string{`TRUSTED_PROXIES="none"`, "whole value none"}},
		{map[string]string{"TRUSTED_PROXIES": " , "}, []string{`TRUSTED_PROXIES=","`, "use none"}},
		{map[string]string{"ADMIN_ADDR": "0.0.0.0:9084"}, []string{`ADMIN_ADDR="0.0.0.0:9084"`, "ADMIN_TOKEN"}},
		{map[string]string{"ADMIN_ADDR": ":9084"}, []string{`ADMIN_ADDR=":9084"`, "ADMIN_TOKEN"}},
		{map[string]string{"ADMIN_ADDR": "9084"}, []string{`ADMIN_ADDR="9084"`, "host:port"}},
		{map[string]string{"ADMIN_ADDR": "127.0.0.1:99999"}, []string{`ADMIN_ADDR="127.0.0.1:99999"`, "port"}},
		{map[string]string{"ADMIN_TOKEN": shortToken}, []string{"ADMIN_TOKEN", "7 characters", "at least 16"}},
		{map[string]string{"ADMIN_TOKEN": shortToken, "ADMIN_ADDR": "off"}, []string{"ADMIN_TOKEN"}},
		{map[string]string{"PPROF": "true", "ADMIN_ADDR": "off"}, []string{`PPROF="true"`, "ADMIN_ADDR"}},
		{map[string]string{"PPROF": "sometimes"}, []string{`PPROF="sometimes"`}},
		{map[string]string{"CONNECT_RATE_PER_IP": "-1"}, []string{`CONNECT_RATE_PER_IP="-1"`}},
		{map[string]string{"CONNECT_RATE_PER_IP": "fast"}, []string{`CONNECT_RATE_PER_IP="fast"`}},
		{map[string]string{"CONNECT_RATE_PER_IP": "NaN"}, []string{`CONNECT_RATE_PER_IP="NaN"`}},
		{map[string]string{"CONNECT_RATE_PER_IP": "Inf"}, []string{`CONNECT_RATE_PER_IP="Inf"`}},
		{map[string]string{"CONNECT_BURST_PER_IP": "0"}, []string{`CONNECT_BURST_PER_IP="0"`}},
		{map[string]string{"MAX_CONNECTIONS": "-1"}, []string{`MAX_CONNECTIONS="-1"`}},
		{map[string]string{"MAX_CONNECTIONS_PER_USER": "lots"}, []string{`MAX_CONNECTIONS_PER_USER="lots"`}},
	}
	for _, tc := range cases {
		_, err := loadConfig(envOf(tc.env))
		if err == nil {
			t.Errorf("%v accepted", tc.env)
			continue
		}
		msg := err.Error()
		if strings.Contains(msg, "\n") {
			t.Errorf("%v: error %q is not one line", tc.env, msg)
		}
		for _, want := range tc.want {
			if !strings.Contains(msg, want) {
				t.Errorf("%v: error %q lacks %s", tc.env, msg, want)
			}
		}
		if strings.Contains(msg, "hunter2") {
			t.Errorf("%v: error %q leaks a secret", tc.env, msg)
		}
	}
}

func TestConfigAuthAndLimitDefaults(t *testing.T) {
	cfg, err := loadConfig(envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"auth mode", cfg.AuthMode, authLoopback},
		{"max connections", cfg.MaxConnections, 0},
		{"max per user", cfg.MaxConnectionsPerUser, 32},
		{"rate per ip", cfg.ConnectRatePerIP, 20.0},
		{"burst per ip", cfg.ConnectBurstPerIP, 100},
		{"trusted proxies", fmt.Sprint(cfg.TrustedProxies), "[127.0.0.0/8 ::1/128 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 fc00::/7]"},
		{"admin addr", cfg.AdminAddr, "127.0.0.1:9084"},
		{"admin token", cfg.AdminToken, ""},
		{"pprof", cfg.Pprof, false},
		{"jwt methods", len(cfg.JWT.Methods), 0},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestConfigKeyTypePinsTheJWTAlgorithms(t *testing.T) {
	dir := t.TempDir()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	certDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(1)},
		&x509.Certificate{SerialNumber: big.NewInt(1)}, &p256.PublicKey, p256)
	if err != nil {
		t.Fatal(err)
	}
	rsaMethods := "RS256 RS384 RS512 PS256 PS384 PS512"
	cases := []struct {
		name    string
		file    string
		key     interface{ Equal(crypto.PublicKey) bool }
		methods string
	}{
		{"RSA-2048", writePublicKeyPEM(t, dir, "rsa.pem", &rsaKey.PublicKey), &rsaKey.PublicKey, rsaMethods},
		{"RSA-2048 PKCS#1", writePEM(t, dir, "rsa1.pem", "RSA PUBLIC KEY", x509.MarshalPKCS1PublicKey(&rsaKey.PublicKey)), &rsaKey.PublicKey, rsaMethods},
		{"ECDSA P-256", writePublicKeyPEM(t, dir, "p256.pem", &p256.PublicKey), &p256.PublicKey, "ES256"},
		{"ECDSA P-384", writePublicKeyPEM(t, dir, "p384.pem", &p384.PublicKey), &p384.PublicKey, "ES384"},
		{"Ed25519", writePublicKeyPEM(t, dir, "ed.pem", edPub), edPub, "EdDSA"},
		{"certificate", writePEM(t, dir, "cert.pem", "CERTIFICATE", certDER), &p256.PublicKey, "ES256"},
	}
	for _, tc := range cases {
		cfg, err := loadConfig(envOf(map[string]string{"JWT_PUBLIC_KEY_FILE": tc.file}))
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if cfg.AuthMode != authJWT || strings.Join(cfg.JWT.Methods, " ") != tc.methods ||
			cfg.JWT.PublicKey == nil || !tc.key.Equal(cfg.JWT.PublicKey) || cfg.JWT.Secret != nil || cfg.JWT.JWKSURL != "" {
			t.Errorf("%s: mode %q, methods %v, key %T; want jwt, %s and the file's key", tc.name, cfg.AuthMode, cfg.JWT.Methods, cfg.JWT.PublicKey, tc.methods)
		}
	}

	secret := strings.Repeat("s", 32)
	cfg, err := loadConfig(envOf(map[string]string{"JWT_SECRET": secret}))
	if err != nil {
		t.Fatalf("32-byte JWT_SECRET: %v", err)
	}
	if cfg.AuthMode != authJWT || strings.Join(cfg.JWT.Methods, " ") != "HS256 HS384 HS512" || string(cfg.JWT.Secret) != secret {
		t.Fatalf("JWT_SECRET: mode %q, methods %v", cfg.AuthMode, cfg.JWT.Methods)
	}
	if cfg.JWT.UsernameClaim != "sub" || cfg.JWT.Leeway != 0 || cfg.JWT.Cookie != "" {
		t.Fatalf("JWT defaults: %+v", cfg.JWT)
	}

	cfg, err = loadConfig(envOf(map[string]string{"AUTH_MODE": "JWT", "JWT_JWKS_URL": "https://idp.example.com/jwks", "JWT_LEEWAY": "5m"}))
	if err != nil {
		t.Fatalf("JWT_JWKS_URL: %v", err)
	}
	if cfg.AuthMode != authJWT || cfg.JWT.JWKSRefresh != 15*time.Minute || cfg.JWT.Leeway != 5*time.Minute ||
		slices.ContainsFunc(cfg.JWT.Methods, func(m string) bool { return strings.HasPrefix(m, "HS") }) ||
		!slices.Contains(cfg.JWT.Methods, "RS256") || !slices.Contains(cfg.JWT.Methods, "ES256") || !slices.Contains(cfg.JWT.Methods, "EdDSA") {
		t.Fatalf("JWT_JWKS_URL: mode %q, refresh %v, methods %v; want asymmetric algorithms only", cfg.AuthMode, cfg.JWT.JWKSRefresh, cfg.JWT.Methods)
	}
}

func TestConfigReadsLimitsProxiesAndAdminVariables(t *testing.T) {
	cfg, err := loadConfig(envOf(map[string]string{
		"AUTH_MODE": "None", "MAX_CONNECTIONS": "5000", "MAX_CONNECTIONS_PER_USER": "0",
		"CONNECT_RATE_PER_IP": "0.5", "CONNECT_BURST_PER_IP": "3",
		"TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8",
		"ADMIN_ADDR":      "0.0.0.0:9100", "ADMIN_TOKEN": "0123456789abcdef", "PPROF": "true",
	}))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("10.0.0.0/8")}
	if cfg.AuthMode != authNone || cfg.MaxConnections != 5000 || cfg.MaxConnectionsPerUser != 0 ||
		cfg.ConnectRatePerIP != 0.5 || cfg.ConnectBurstPerIP != 3 || !slices.Equal(cfg.TrustedProxies, want) ||
		cfg.AdminAddr != "0.0.0.0:9100" || cfg.AdminToken != "0123456789abcdef" || !cfg.Pprof {
		t.Fatalf("not read as set: %+v", cfg)
	}

	// Prefixes are masked, IPv4-mapped addresses unmapped, IPv6 accepted.
	cfg, err = loadConfig(envOf(map[string]string{"TRUSTED_PROXIES": "10.1.2.3/8,::ffff:192.0.2.1,fd00::/8,::1,"}))
	if err != nil {
		t.Fatal(err)
	}
	want = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.1/32"),
		netip.MustParsePrefix("fd00::/8"), netip.MustParsePrefix("::1/128")}
	if !slices.Equal(cfg.TrustedProxies, want) {
		t.Fatalf("TRUSTED_PROXIES parsed to %v, want %v", cfg.TrustedProxies, want)
	}

	// none trusts no proxy, loopback included; a list replaces the default.
	for _, v := range []string{"none", " NONE "} {
		cfg, err = loadConfig(envOf(map[string]string{"TRUSTED_PROXIES": v}))
		if err != nil || cfg.TrustedProxies != nil {
			t.Errorf("TRUSTED_PROXIES=%q: %v, %v; want no proxy", v, cfg.TrustedProxies, err)
		}
	}
	cfg, err = loadConfig(envOf(map[string]string{"TRUSTED_PROXIES": "10.0.0.0/8"}))
	if err != nil || inPrefixes(netip.MustParseAddr("127.0.0.1"), cfg.TrustedProxies) {
		t.Errorf("TRUSTED_PROXIES=10.0.0.0/8: %v, %v; want loopback no longer trusted", cfg.TrustedProxies, err)
	}

	// Loopback admin addresses need no token; off turns the listener off.
	for addr, want := range map[string]string{"localhost:9084": "localhost:9084", "[::1]:0": "[::1]:0", "OFF": ""} {
		cfg, err := loadConfig(envOf(map[string]string{"ADMIN_ADDR": addr}))
		if err != nil || cfg.AdminAddr != want {
			t.Errorf("ADMIN_ADDR=%s: %q, %v; want %q", addr, cfg.AdminAddr, err, want)
		}
	}
}

func TestConfigRedisDeploymentVariableSetButEmptyIsAnError(t *testing.T) {
	cases := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"REDIS_CLUSTER_ADDRS": ""}, "REDIS_CLUSTER_ADDRS"},
		{map[string]string{"REDIS_CLUSTER_ADDRS": "  "}, "REDIS_CLUSTER_ADDRS"},
		{map[string]string{"REDIS_SENTINEL_ADDRS": "", "REDIS_SENTINEL_MASTER": "events"}, "REDIS_SENTINEL_ADDRS"},
		{map[string]string{"REDIS_SENTINEL_ADDRS": "10.0.0.1:26379", "REDIS_SENTINEL_MASTER": ""}, "REDIS_SENTINEL_MASTER"},
		{map[string]string{"REDIS_URL": ""}, "REDIS_URL"},
		{map[string]string{"REDIS_HOST": "", "REDIS_PORT": "6380"}, "REDIS_HOST"},
	}
	for _, tc := range cases {
		_, err := loadConfig(envOf(tc.env))
		var cerr *configError
		if !errors.As(err, &cerr) || cerr.name != tc.want {
			t.Errorf("%q: %v, want an error naming %s", tc.env, err, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), "is set but empty") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %q, want one line saying it is set but empty", tc.env, err)
		}
	}
	// Unset, they are the defaults; the other variables set to nothing
	// still mean their default.
	cfg, err := loadConfig(envOf(map[string]string{"REDIS_PORT": "", "REDIS_PASSWORD": "", "PORT": ""}))
	if err != nil || cfg.Redis.Addr != "localhost:6379" || cfg.ClusterAddrs != nil || cfg.SentinelAddrs != nil {
		t.Fatalf("unset deployment variables: %v, addr %q", err, cfg.Redis.Addr)
	}
}
