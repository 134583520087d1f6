package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
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
