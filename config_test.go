package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func envOf(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
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
