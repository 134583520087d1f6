package wsconn

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// maskedFrame is a client frame: final, masked with key, one fragment of
// fewer than 126 bytes.
func maskedFrame(opcode byte, key [4]byte, payload []byte) []byte {
	f := append([]byte{0x80 | opcode, 0x80 | byte(len(payload))}, key[:]...)
	for i, b := range payload {
		f = append(f, b^key[i&3])
	}
	return f
}

// readerConn is a Conn reading from the given bytes, for NextControl.
func readerConn(b []byte) *Conn {
	return &Conn{in: bufio.NewReaderSize(bytes.NewReader(b), readBufferSize)}
}

func TestNextControlReadsPingsAndPongsAndLeavesTheRestToGorilla(t *testing.T) {
	key := [4]byte{1, 2, 3, 4}
	text := maskedFrame(websocket.TextMessage, key, []byte("hi"))
	for _, tc := range []struct {
		name    string
		frame   []byte
		op      int
		payload string
	}{
		{"ping", maskedFrame(websocket.PingMessage, key, []byte("are you there")), websocket.PingMessage, "are you there"},
		{"pong", maskedFrame(websocket.PongMessage, key, []byte("yes")), websocket.PongMessage, "yes"},
		{"empty pong", maskedFrame(websocket.PongMessage, key, nil), websocket.PongMessage, ""},
		{"ping of 125 bytes", maskedFrame(websocket.PingMessage, key, bytes.Repeat([]byte("p"), 125)), websocket.PingMessage, strings.Repeat("p", 125)},
		{"text", text, 0, ""},
		{"close", maskedFrame(websocket.CloseMessage, key, []byte{3, 232}), 0, ""},
		{"unmasked ping", []byte{0x89, 0x01, 'x'}, 0, ""},
		{"fragmented ping", append([]byte{0x09}, maskedFrame(websocket.PingMessage, key, []byte("x"))[1:]...), 0, ""},
		{"ping with RSV1", append([]byte{0xc9}, maskedFrame(websocket.PingMessage, key, []byte("x"))[1:]...), 0, ""},
		{"ping of 126 bytes", append([]byte{0x89, 0x80 | 126, 0, 126}, make([]byte, 4+126)...), 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := readerConn(append(tc.frame, text...))
			op, payload, err := c.NextControl()
			if err != nil || op != tc.op || string(payload) != tc.payload {
				t.Fatalf("NextControl = %d %q %v, want %d %q", op, payload, err, tc.op, tc.payload)
			}
			// A frame read here is consumed whole; any other is left
			// whole for gorilla.
			want := len(tc.frame) + len(text)
			if op != 0 {
				want = len(text)
			}
			if n := c.in.Buffered(); n != want {
				t.Fatalf("%d bytes left for gorilla, want %d", n, want)
			}
		})
	}
}

func TestNextControlWaitsForAControlFrameThatArrivesInPieces(t *testing.T) {
	frame := maskedFrame(websocket.PingMessage, [4]byte{9, 8, 7, 6}, []byte("split"))
	r, w := io.Pipe()
	c := &Conn{in: bufio.NewReaderSize(r, readBufferSize)}
	go func() {
		for _, b := range frame { // one byte at a time
			_, _ = w.Write([]byte{b})
		}
	}()
	op, payload, err := c.NextControl()
	if err != nil || op != websocket.PingMessage || string(payload) != "split" {
		t.Fatalf("NextControl = %d %q %v", op, payload, err)
	}
	w.CloseWithError(errors.New("closed"))
	if _, _, err := c.NextControl(); err == nil {
		t.Fatal("no error at the end of the stream")
	}
}

func TestGorillaReadsThroughOurBufferAndReadsOnWhereNextControlStopped(t *testing.T) {
	// Points 1 to 3 of the package comment: gorilla reads through the
	// buffer Upgrade hands it, and after NextControl took a ping, gorilla
	// reads the data frame behind it as its next message.
	server, client := upgradedConn(t)
	if server.in == nil {
		t.Fatal("gorilla was not handed our read buffer")
	}
	key := [4]byte{5, 6, 7, 8}
	stream := append(maskedFrame(websocket.PingMessage, key, []byte("p")), maskedFrame(websocket.TextMessage, key, []byte(`{"a":1}`))...)
	if _, err := client.NetConn().Write(stream); err != nil {
		t.Fatal(err)
	}
	_ = server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := server.AwaitReadable(); err != nil {
		t.Fatal(err)
	}
	if op, payload, err := server.NextControl(); err != nil || op != websocket.PingMessage || string(payload) != "p" {
		t.Fatalf("NextControl = %d %q %v", op, payload, err)
	}
	if op, _, err := server.NextControl(); err != nil || op != 0 {
		t.Fatalf("NextControl on a text frame = %d %v, want 0", op, err)
	}
	typ, data, err := server.ReadMessage()
	if err != nil || typ != websocket.TextMessage || string(data) != `{"a":1}` {
		t.Fatalf("gorilla read %d %q %v", typ, data, err)
	}
}

func TestGorillaRefusesFramesAfterAnyCloseFrameAndWritesItThroughTheCork(t *testing.T) {
	// Points 4 and 5: a close frame written while corked lands in the
	// batch, and every later frame fails with ErrCloseSent, which is why a
	// failed batch is still flushed.
	server, client := upgradedConn(t)
	server.Cork()
	if err := server.WriteMessage(websocket.TextMessage, []byte(`{"n":1}`)); err != nil {
		t.Fatal(err)
	}
	if err := server.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseMessageTooBig, ""), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := server.WriteMessage(websocket.TextMessage, []byte(`{"n":2}`)); !errors.Is(err, websocket.ErrCloseSent) {
		t.Fatalf("write after a close frame: %v, want ErrCloseSent", err)
	}
	want := FrameSize(len(`{"n":1}`)) + FrameSize(2)
	if n, err := server.Flush(time.Now().Add(time.Second)); err != nil || n != want {
		t.Fatalf("Flush = %d %v, want %d bytes: the frame and the close frame", n, err, want)
	}
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, data, err := client.ReadMessage(); err != nil || string(data) != `{"n":1}` {
		t.Fatalf("client read %q %v", data, err)
	}
	if _, _, err := client.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseMessageTooBig) {
		t.Fatalf("client read %v, want close 1009", err)
	}
}

func TestFrameSizeMatchesWhatGorillaWrites(t *testing.T) {
	// Point 6.
	server, _ := upgradedConn(t)
	for _, n := range []int{0, 125, 126, 65535, 65536} {
		server.Cork()
		if err := server.WriteMessage(websocket.TextMessage, bytes.Repeat([]byte("x"), n)); err != nil {
			t.Fatal(err)
		}
		if got := server.Buffered(); got != FrameSize(n) {
			t.Errorf("a %d-byte frame is %d bytes on the wire, FrameSize says %d", n, got, FrameSize(n))
		}
		server.Discard()
	}
}

func TestDiscardReturnsTheBatchBuffer(t *testing.T) {
	server, _ := upgradedConn(t)
	server.Cork()
	_ = server.WriteMessage(websocket.TextMessage, []byte("x"))
	server.Discard()
	if server.out.buf != nil || server.out.corked {
		t.Fatal("Discard kept the buffer or the cork")
	}
	if n := server.Buffered(); n != 0 {
		t.Fatalf("%d bytes buffered after Discard", n)
	}
}

func TestBatchConnKeepsFramesFromOtherWritersInOrder(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	out := &batchConn{Conn: a}
	got := make(chan []byte, 1)
	go func() {
		all, _ := io.ReadAll(b)
		got <- all
	}()
	out.cork()
	_, _ = out.Write([]byte("one,"))
	// Another goroutine's frame while corked joins the batch, in order.
	done := make(chan struct{})
	go func() {
		_, _ = out.Write([]byte("two,"))
		close(done)
	}()
	<-done
	if n, err := out.flush(time.Now().Add(time.Second)); err != nil || n != 8 {
		t.Fatalf("flush: %d, %v", n, err)
	}
	_, _ = out.Write([]byte("three")) // uncorked: straight through
	a.Close()
	if all := <-got; !bytes.Equal(all, []byte("one,two,three")) {
		t.Fatalf("socket got %q", all)
	}
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func TestTryFlushKeepsWhatTheSocketDidNotTake(t *testing.T) {
	// Default socket buffers: with tiny ones (SO_SNDBUF 4 KiB) even a
	// plain net.Conn.Write stalls on this kernel.
	peer, sock := tcpPair(t)
	raw, err := sock.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	out := &batchConn{Conn: sock, raw: raw}

	// Far more than the socket buffers take while the peer reads nothing.
	var sent bytes.Buffer
	for i := 0; sent.Len() < 4<<20; i++ {
		sent.WriteString(fmt.Sprintf("%08d,", i))
	}
	out.cork()
	_, _ = out.Write(sent.Bytes())
	done, err := out.tryFlush()
	if err != nil || done {
		t.Fatalf("tryFlush of 4 MiB to a peer that reads nothing: done %v, err %v; want a partial write", done, err)
	}
	left := out.buffered()
	if left == 0 || left >= sent.Len() {
		t.Fatalf("%d of %d bytes left after a partial write", left, sent.Len())
	}
	// The rest goes out with flush, in order, once the peer reads.
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(peer, int64(sent.Len())))
		got <- b
	}()
	if n, err := out.flush(time.Now().Add(5 * time.Second)); err != nil || n != left {
		t.Fatalf("flush: %d, %v; want %d", n, err, left)
	}
	if b := <-got; !bytes.Equal(b, sent.Bytes()) {
		t.Fatalf("peer got %d bytes, not the %d sent in order", len(b), sent.Len())
	}
}

// BenchmarkEncodeFrame is what framing one 256-byte event costs a write
// pump per connection, into a corked socket (no system call): written
// with WriteMessage (framed per connection) or WritePreparedMessage
// (framed once per event, shared by all connections of the user).
//
//	go test -run '^$' -bench EncodeFrame -count 3
func BenchmarkEncodeFrame(b *testing.B) {
	u, _ := upgradedConn(b)
	data := bytes.Repeat([]byte("x"), 256)
	pm, err := websocket.NewPreparedMessage(websocket.TextMessage, data)
	if err != nil {
		b.Fatal(err)
	}
	for _, mode := range []string{"WriteMessage", "WritePreparedMessage"} {
		b.Run(mode, func(b *testing.B) {
			writeCorked(b, u, func() error {
				if mode == "WriteMessage" {
					return u.WriteMessage(websocket.TextMessage, data)
				}
				return u.WritePreparedMessage(pm)
			})
		})
	}
}

// BenchmarkPrepareFrame is what encoding an event once costs
// (websocket.NewPreparedMessage and its first frame): worth it for a user
// with many connections (preparedMin), not for one or two.
//
//	go test -run '^$' -bench PrepareFrame -count 3
func BenchmarkPrepareFrame(b *testing.B) {
	u, _ := upgradedConn(b)
	data := bytes.Repeat([]byte("x"), 256)
	writeCorked(b, u, func() error {
		pm, err := websocket.NewPreparedMessage(websocket.TextMessage, data)
		if err != nil {
			return err
		}
		return u.WritePreparedMessage(pm)
	})
}

// writeCorked runs write in b's loop with c corked, dropping the batch every
// 64 frames so that it never grows: no system call is measured.
func writeCorked(b *testing.B, c *Conn, write func() error) {
	b.ReportAllocs()
	c.out.cork()
	for i := 0; b.Loop(); i++ {
		if err := write(); err != nil {
			b.Fatal(err)
		}
		if i%64 == 63 {
			dropBatch(c.out)
		}
	}
	dropBatch(c.out)
}

// upgradedConn returns the server side of a WebSocket connection upgraded
// the daemon's way (NewUpgrader, Upgrade) and the client side; both are
// closed when tb ends.
func upgradedConn(tb testing.TB) (server *Conn, client *websocket.Conn) {
	tb.Helper()
	conns := make(chan *Conn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u := NewUpgrader()
		c, err := Upgrade(&u, w, r)
		if err != nil {
			tb.Error(err)
			close(conns)
			return
		}
		conns <- c
	}))
	tb.Cleanup(srv.Close)
	client, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { client.Close() })
	server = <-conns
	if server == nil {
		tb.FailNow()
	}
	tb.Cleanup(func() { server.Close() })
	return server, client
}

// dropBatch empties a corked batch without sending it.
func dropBatch(out *batchConn) {
	out.mu.Lock()
	*out.buf = (*out.buf)[:0]
	out.mu.Unlock()
}
