package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"fanout/internal/testproc"
)

// writeTestCA writes a CA and a server certificate for 127.0.0.1 into dir
// and returns the client TLS config that trusts the CA.
func writeTestCA(t *testing.T, dir string) *tls.Config {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fanout test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	for name, block := range map[string]*pem.Block{
		"ca.pem":         {Type: "CERTIFICATE", Bytes: caDER},
		"server.pem":     {Type: "CERTIFICATE", Bytes: srvDER},
		"server-key.pem": {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
}

// startTLSRedis starts a redis-server that speaks only TLS and wants a password.
func startTLSRedis(t *testing.T, dir, password string) *redisServer {
	t.Helper()
	r := redisAt(t)
	r.TLS, r.Password = writeTestCA(t, dir), password
	r.Args = []string{
		"--tls-cert-file", filepath.Join(dir, "server.pem"),
		"--tls-key-file", filepath.Join(dir, "server-key.pem"),
		"--tls-ca-cert-file", filepath.Join(dir, "ca.pem"),
		"--tls-auth-clients", "no",
		"--requirepass", password,
	}
	if err := r.Start(); err != nil {
		t.Fatalf("start TLS redis-server: %v", err)
	}
	return r
}

func TestRedisOverTLSWithPassword(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	r := startTLSRedis(t, dir, "s3cret-pw")
	td := startDaemon(t, r, map[string]string{
		"REDIS_TLS":         "true",
		"REDIS_TLS_CA_FILE": filepath.Join(dir, "ca.pem"),
		"REDIS_PASSWORD":    "s3cret-pw",
	})
	td.waitReady()
	conn := td.dial("u")
	td.publish("u", `{"type":"over tls"}`)
	if got := readText(t, conn, 5*time.Second); got != `{"type":"over tls"}` {
		t.Fatalf("got %q", got)
	}

	viaURL := startDaemon(t, r, map[string]string{
		"REDIS_URL":         "rediss://:s3cret-pw@127.0.0.1:" + strconv.Itoa(r.Port) + "/0",
		"REDIS_TLS_CA_FILE": filepath.Join(dir, "ca.pem"),
	})
	viaURL.waitReady()
}

func TestWrongRedisPasswordKeepsDaemonNotReadyWithoutLeakingIt(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	r := startTLSRedis(t, dir, "right-pw")
	td := startDaemon(t, r, map[string]string{
		"REDIS_TLS":         "true",
		"REDIS_TLS_CA_FILE": filepath.Join(dir, "ca.pem"),
		"REDIS_PASSWORD":    "wrong-pw",
	})
	eventually(t, 10*time.Second, "auth failures logged", func() bool {
		return countLines(td.logs.String(), "Redis subscription failed; retrying") >= 2
	})
	if td.readyStatus() != http.StatusServiceUnavailable {
		t.Fatal("ready although Redis refused the password")
	}
	logs := td.logs.String()
	if !strings.Contains(logs, "WRONGPASS") {
		t.Errorf("logs do not say why Redis refused:\n%s", logs)
	}
	if strings.Contains(logs, "wrong-pw") {
		t.Error("logs leak the Redis password")
	}
}

// tlsMistake is what every part says of a Redis without TLS when
// REDIS_TLS=true.
const tlsMistake = "did not answer the TLS handshake within "

func TestREDIS_TLSAgainstARedisWithoutTLSIsSaidWithinSeconds(t *testing.T) {
	t.Parallel()
	r := startRedis(t) // no TLS
	t.Cleanup(func() { testproc.WaitDialProbesDone(time.Now().Add(3 * time.Second)) })

	t.Run("publish", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		res := runPublishCommand(t, r, "", []string{"REDIS_TLS=true"}, "--username", "u", `{"type":"x"}`)
		took := time.Since(start)
		stderr := strings.TrimSuffix(res.stderr, "\n")
		if res.code != publishFailed || took > 5*time.Second || strings.Contains(stderr, "\n") ||
			!strings.Contains(stderr, "redis at "+r.addr()+" "+tlsMistake) || !strings.HasSuffix(stderr, "is REDIS_TLS right?") {
			t.Fatalf("after %v: exit %d, stderr %q; want exit 1 within 5s with one line naming %s and REDIS_TLS", took, res.code, res.stderr, r.addr())
		}
	})

	t.Run("daemon start-up", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		p := startProcess(t, daemonCommand(t, "REDIS_HOST=127.0.0.1", "REDIS_PORT="+strconv.Itoa(r.Port), "REDIS_TLS=true",
			"LISTEN_HOST=127.0.0.1", "PORT="+strconv.Itoa(freePort(t))))
		select {
		case <-p.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("still running after 10s, want exit code 2")
		}
		var exit *exec.ExitError
		out := strings.TrimSuffix(p.Output(), "\n")
		if !errors.As(p.Err(), &exit) || exit.ExitCode() != 2 || time.Since(start) > 5*time.Second || strings.Contains(out, "\n") ||
			out != "fanout: configuration: redis at "+r.addr()+" "+tlsMistake+"2s: is REDIS_TLS right?" {
			t.Fatalf("after %v: %v, output %q; want exit code 2 within 5s with the one line", time.Since(start), p.Err(), out)
		}
	})

	t.Run("daemon retrying", func(t *testing.T) {
		t.Parallel()
		// A Redis that comes up without TLS after the daemon started: its
		// retries say it. With the default PROBE_TIMEOUT (5s), which
		// bounds the clock read; a shorter one than the 2 s handshake
		// bound ends the read first ("context deadline exceeded").
		td := startDaemon(t, r, map[string]string{"REDIS_TLS": "true", "LOG_LEVEL": "info", "PROBE_TIMEOUT": "", "PROBE_INTERVAL": ""})
		eventually(t, 10*time.Second, "retries logged", func() bool {
			return countLines(td.logs.String(), "Redis subscription failed; retrying") >= 2
		})
		for _, line := range strings.Split(strings.TrimSpace(td.logs.String()), "\n") {
			if strings.Contains(line, "Redis subscription failed") && !strings.Contains(line, tlsMistake) {
				t.Fatalf("a retry that does not say Redis did not answer TLS: %s", line)
			}
		}
		if _, body, _ := get(td.baseURL + "/ready"); strings.TrimSpace(body) != "not ready: "+notReadyUnreachable {
			t.Fatalf("/ready: %q", body)
		}
	})
}
