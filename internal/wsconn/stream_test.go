//go:build linux

package wsconn

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// takenOverStream answers a GET with headers and a first flushed line
// through net/http, takes the connection over, and returns the stream and
// the client's socket, positioned after the response's head.
func takenOverStream(t *testing.T) (*Stream, net.Conn, *bufio.Reader) {
	t.Helper()
	streams := make(chan *Stream, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "first\n")
		_ = http.NewResponseController(w).Flush()
		s, err := Hijack(w)
		if err != nil {
			t.Error(err)
		}
		streams <- s
	}))
	t.Cleanup(srv.Close)
	client, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	if _, err := io.WriteString(client, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(client)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.TransferEncoding == nil || resp.TransferEncoding[0] != "chunked" {
		t.Fatalf("Transfer-Encoding %v, want chunked", resp.TransferEncoding)
	}
	s := <-streams
	if s == nil {
		t.FailNow()
	}
	t.Cleanup(func() { s.Close() })
	return s, client, br
}

func TestAStreamKeepsWhatNetHTTPWroteAndWritesCorked(t *testing.T) {
	s, _, br := takenOverStream(t)
	s.Cork()
	for _, p := range []string{"5\r\nmore\n\r\n", "0\r\n\r\n"} {
		if _, err := io.WriteString(s, p); err != nil {
			t.Fatal(err)
		}
	}
	if s.Buffered() == 0 {
		t.Fatal("nothing collected while corked")
	}
	if _, err := s.Flush(time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	// net/http's first chunk, then ours, then the last chunk.
	resp, err := http.ReadResponse(bufio.NewReader(io.MultiReader(
		strings.NewReader("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), br)), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil || string(body) != "first\nmore\n" {
		t.Fatalf("body %q, %v; want net/http's chunk and ours, then the end", body, err)
	}
}

func TestAParkedStreamResumesWhenTheClientGoesAwayOrTheStreamCloses(t *testing.T) {
	for _, end := range []string{"client closes", "stream closes"} {
		s, client, _ := takenOverStream(t)
		resumed := make(chan struct{}, 1)
		s.SetResume(func() { resumed <- struct{}{} })
		if !s.Park() {
			t.Fatal("Park = false, want the read side parked")
		}
		select {
		case <-resumed:
			t.Fatal("resumed with nothing to read")
		case <-time.After(2 * sweepEvery):
		}
		if end == "client closes" {
			client.Close()
		} else {
			s.Close()
		}
		waitResumed(t, resumed, "when the "+end[:len(end)-7]+" closed")
		var b [8]byte
		if n, err := s.Read(b[:]); err == nil {
			t.Fatalf("%s: Read = %d, nil; want the end", end, n)
		}
	}
}
