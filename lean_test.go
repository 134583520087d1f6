package main

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// maskedFrame is a client frame (masked, with a zero key) of one fragment.
func maskedFrame(opcode byte, payload []byte) []byte {
	f := []byte{0x80 | opcode, 0x80 | byte(len(payload)), 0, 0, 0, 0}
	return append(f, payload...)
}

func TestFramesArrivingTogetherAreAllReadAtOnce(t *testing.T) {
	// The read pump waits for the socket only when gorilla's buffer is
	// empty: frames that arrive in one segment must not wait for the next
	// one (here that would be the 30 s pong wait).
	td := startDaemon(t, startRedis(t), map[string]string{"PONG_WAIT": "30s", "PING_INTERVAL": "25s"})
	conn := td.dial("u")
	pongs := make(chan string, 2)
	conn.SetPongHandler(func(data string) error { pongs <- data; return nil })

	// A message and a ping in one segment: gorilla reads both into its
	// buffer at once and returns the message; the ping is answered only if
	// the pump looks in that buffer before it waits for the socket.
	both := append(maskedFrame(websocket.TextMessage, []byte(`{"hi":1}`)), maskedFrame(websocket.PingMessage, []byte("two"))...)
	if _, err := conn.NetConn().Write(both); err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() { readErr <- readUntilError(conn) }()
	select {
	case data := <-pongs:
		if data != "two" {
			t.Fatalf("pong %q, want two", data)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("a ping that arrived with a message was not answered")
	}
	conn.Close()
	<-readErr
	eventually(t, 3*time.Second, "connection gone", func() bool { return td.d.hub.connectionCount("u") == 0 })
}

func TestIdleConnectionHoldsOneSmallGoroutine(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{"LOG_LEVEL": "warn"})
	td.waitReady()
	settle := func() (goroutines int, stack uint64) {
		var ms runtime.MemStats
		for range 3 {
			runtime.GC() // shrinks stacks that have room to spare
		}
		runtime.ReadMemStats(&ms)
		return runtime.NumGoroutine(), ms.StackInuse
	}
	g0, s0 := settle()
	const n = 300
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i] = td.dial(fmt.Sprintf("user%d", i))
	}
	eventually(t, 5*time.Second, "all registered", func() bool { return td.d.hub.connections.Load() == n })
	// An event to each (a write pump runs, writes and returns) and a
	// ping round, then idle again.
	for i := range n {
		td.publish(fmt.Sprintf("user%d", i), `{"type":"x"}`)
	}
	for _, c := range conns {
		if got := readText(t, c, 5*time.Second); got != `{"type":"x"}` {
			t.Fatalf("got %s", got)
		}
	}
	time.Sleep(100 * time.Millisecond)
	g1, s1 := settle()
	// The race detector doubles the stack guard, so that a 2 KiB stack is
	// not enough there: ./test.sh runs this test without it too.
	if per := float64(g1-g0) / n; per > 1.05 {
		t.Errorf("%.2f goroutines per idle connection, want 1 (the read pump; no write pump while idle)", per)
	}
	if per := float64(s1-s0) / n; !raceEnabled && per > 3<<10 {
		t.Errorf("%.0f bytes of goroutine stack per idle connection, want 2 KiB (the read pump parks on a shallow stack)", per)
	}
	for _, c := range conns {
		c.Close()
	}
}

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

type countingListener struct {
	net.Listener
	writes *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{Conn: conn, writes: l.writes}, nil
}

func TestAQueuedBatchGoesOutInOneWritePer32KiB(t *testing.T) {
	for _, tc := range []struct {
		messages, size, writes int
		prepared               bool
	}{
		{100, 40, 1, false},    // 4.2 KB: one write
		{100, 1024, 4, false},  // 103 KB: chunks of 32 frames, then the last 4
		{1, 100_000, 1, false}, // one large frame
		{100, 1024, 4, true},   // the same, encoded once (a large fan-out)
	} {
		t.Run(fmt.Sprintf("%dx%dB/prepared=%v", tc.messages, tc.size, tc.prepared), func(t *testing.T) {
			hub := newHub(clientSettings{sendQueueSize: 1000, sendQueueBytes: 1 << 20, pingInterval: time.Minute, pongWait: time.Minute, writeWait: 5 * time.Second},
				slog.New(slog.NewTextHandler(io.Discard, nil)), &Stats{})
			writes := &atomic.Int64{}
			queued := make(chan struct{})
			server := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				u, err := upgrade(&websocket.Upgrader{}, w, r)
				if err != nil {
					t.Errorf("upgrade: %v", err)
					return
				}
				c := newClient(hub, u, "u", "test")
				if err := hub.reserve("u"); err != nil {
					t.Error(err)
					return
				}
				// Queued before the pump may run: it finds them all.
				c.mu.Lock()
				c.writing = true
				c.mu.Unlock()
				if err := hub.add(c); err != nil {
					t.Error(err)
					return
				}
				for i := range tc.messages {
					msg := msgOf(fmt.Sprintf(`{"n":%d,"pad":"%s"}`, i, strings.Repeat("x", tc.size-len(fmt.Sprintf(`{"n":%d,"pad":""}`, i)))))
					if tc.prepared {
						msg.prepared, _ = websocket.NewPreparedMessage(websocket.TextMessage, msg.data)
					}
					hub.broadcast("u", msg)
				}
				writes.Store(0) // the handshake's answer is not counted
				close(queued)
				go c.writePump()
				go c.readPump()
			}))
			server.Listener = countingListener{Listener: server.Listener, writes: writes}
			server.Start()
			defer server.Close()

			conn := dialWS(t, "ws"+strings.TrimPrefix(server.URL, "http"), nil)
			<-queued
			for i := range tc.messages {
				got := readText(t, conn, 5*time.Second)
				if len(got) != tc.size || !strings.HasPrefix(got, fmt.Sprintf(`{"n":%d,`, i)) {
					t.Fatalf("message %d: %d bytes %.20q", i, len(got), got)
				}
			}
			if got := writes.Load(); got != int64(tc.writes) {
				t.Errorf("%d messages of %d B went out in %d writes, want %d", tc.messages, tc.size, got, tc.writes)
			}
			// Counted once the write returned, which may be after the read.
			eventually(t, 5*time.Second, "frames counted", func() bool { return hub.stats.FramesDelivered.Load() == uint64(tc.messages) })
			conn.Close()
			hub.wg.Wait()
		})
	}
}

func TestPingTickKeepsPingsInsideThePongWait(t *testing.T) {
	for _, tc := range []struct{ interval, wait, want time.Duration }{
		{54 * time.Second, 60 * time.Second, 3 * time.Second},
		{50 * time.Millisecond, 2 * time.Second, 12500 * time.Microsecond},
		{50 * time.Millisecond, 300 * time.Millisecond, 12500 * time.Microsecond},
		{time.Second, time.Second + time.Microsecond, time.Millisecond},
	} {
		if got := pingTick(tc.interval, tc.wait); got != tc.want {
			t.Errorf("pingTick(%v, %v) = %v, want %v", tc.interval, tc.wait, got, tc.want)
		}
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

func TestSmallUsersFramesAreWrittenBeforeBroadcastReturns(t *testing.T) {
	// For a user with few connections, broadcast writes the frames itself
	// (writeNow) instead of starting a write pump per delivery: they are on
	// the sockets, and counted, by the time it returns.
	td := startDaemon(t, startRedis(t), nil)
	conns := []*websocket.Conn{td.dial("small"), td.dial("small")}
	eventually(t, 5*time.Second, "registered", func() bool { return td.d.hub.connectionCount("small") == 2 })
	for i := range 20 {
		before := td.d.stats.FramesDelivered.Load()
		if n := td.d.hub.broadcast("small", msgOf(fmt.Sprintf(`{"n":%d}`, i))); n != 2 {
			t.Fatalf("broadcast reached %d connections, want 2", n)
		}
		if got := td.d.stats.FramesDelivered.Load() - before; got != 2 {
			t.Fatalf("event %d: %d frames written when broadcast returned, want 2", i, got)
		}
		for _, conn := range conns {
			if got, want := readText(t, conn, 5*time.Second), fmt.Sprintf(`{"n":%d}`, i); got != want {
				t.Fatalf("got %s, want %s", got, want)
			}
		}
	}
	if f, b := td.d.hub.queuedFrames.Load(), td.d.hub.queuedBytes.Load(); f != 0 || b != 0 {
		t.Fatalf("send-queue pressure %d frames %d bytes; frames written at once are never queued", f, b)
	}
}

// BenchmarkEncodeFrame is what framing one 256-byte event costs a write
// pump per connection, into a corked socket (no system call): written
// with WriteMessage (framed per connection) or WritePreparedMessage
// (framed once per event, shared by all connections of the user).
//
//	go test -run '^$' -bench EncodeFrame -count 3
func BenchmarkEncodeFrame(b *testing.B) {
	u := upgradedConn(b)
	data := bytes.Repeat([]byte("x"), 256)
	pm, err := websocket.NewPreparedMessage(websocket.TextMessage, data)
	if err != nil {
		b.Fatal(err)
	}
	for _, mode := range []string{"WriteMessage", "WritePreparedMessage"} {
		b.Run(mode, func(b *testing.B) {
			b.ReportAllocs()
			u.out.cork()
			for i := 0; b.Loop(); i++ {
				if mode == "WriteMessage" {
					err = u.conn.WriteMessage(websocket.TextMessage, data)
				} else {
					err = u.conn.WritePreparedMessage(pm)
				}
				if err != nil {
					b.Fatal(err)
				}
				if i%64 == 63 {
					dropBatch(u.out)
				}
			}
			dropBatch(u.out)
		})
	}
}

// BenchmarkPrepareFrame is what encoding an event once costs
// (websocket.NewPreparedMessage and its first frame): worth it for a user
// with many connections (preparedMin), not for one or two.
//
//	go test -run '^$' -bench PrepareFrame -count 3
func BenchmarkPrepareFrame(b *testing.B) {
	u := upgradedConn(b)
	data := bytes.Repeat([]byte("x"), 256)
	b.ReportAllocs()
	u.out.cork()
	for i := 0; b.Loop(); i++ {
		pm, err := websocket.NewPreparedMessage(websocket.TextMessage, data)
		if err == nil {
			err = u.conn.WritePreparedMessage(pm)
		}
		if err != nil {
			b.Fatal(err)
		}
		if i%64 == 63 {
			dropBatch(u.out)
		}
	}
	dropBatch(u.out)
}

func TestLargeFanOutsAreEncodedOnce(t *testing.T) {
	for _, n := range []int{preparedMin - 1, preparedMin} {
		h := newTestHub(10, 1<<20)
		var clients []*Client
		for range n {
			clients = append(clients, addClient(t, h, "org"))
		}
		msg := msgOf(`{"type":"x"}`)
		h.broadcast("org", msg)
		if got, want := msg.prepared != nil, n >= preparedMin; got != want {
			t.Fatalf("%d connections: prepared %v, want %v", n, got, want)
		}
		if w, _ := clients[n-1].takeWork(nil); len(w.batch) != 1 || w.batch[0] != msg {
			t.Fatalf("%d connections: the message was not queued as it is", n)
		}
	}
}

func TestBroadcastNeverWaitsForASocketAnotherGoroutineWritesTo(t *testing.T) {
	// gorilla answers a client's close frame or protocol error from the read
	// pump, and that write may wait up to a second for a full socket while
	// it holds the connection. broadcast, on the Redis reader, must not
	// wait for it: the event goes to a write pump instead.
	td := startDaemon(t, startRedis(t), nil)
	conn := td.dial("u")
	eventually(t, 5*time.Second, "registered", func() bool { return td.d.hub.connectionCount("u") == 1 })
	c := onlyClient(t, td, "u")

	c.out.mu.Lock() // the read pump's write, stuck on the socket
	release := time.AfterFunc(500*time.Millisecond, c.out.mu.Unlock)
	defer release.Stop()
	start := time.Now()
	td.d.hub.broadcast("u", msgOf(`{"n":1}`))
	if took := time.Since(start); took > 200*time.Millisecond {
		t.Fatalf("broadcast waited %v for a socket another goroutine was writing to", took)
	}
	if got := readText(t, conn, 5*time.Second); got != `{"n":1}` {
		t.Fatalf("got %s", got)
	}
}

func TestWriteNowIgnoresAnExpiredDeadlineOfAnEarlierWrite(t *testing.T) {
	// A write pump's flush leaves its deadline on the socket; RawConn then
	// refuses every write once it has passed. writeNow never waits, so it
	// must write anyway, not take the connection for dead.
	td := startDaemon(t, startRedis(t), map[string]string{"WRITE_WAIT": "200ms"})
	conn := td.dial("u")
	eventually(t, 5*time.Second, "registered", func() bool { return td.d.hub.connectionCount("u") == 1 })
	c := onlyClient(t, td, "u")

	// A pump writes the first event, with the 200 ms deadline.
	c.mu.Lock()
	c.sendQueue = append(c.sendQueue, msgOf(`{"n":1}`))
	start := c.startPumpLocked()
	c.mu.Unlock()
	c.spawnPump(start)
	if got := readText(t, conn, 5*time.Second); got != `{"n":1}` {
		t.Fatalf("got %s", got)
	}
	eventually(t, 5*time.Second, "pump done", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return !c.writing
	})
	time.Sleep(400 * time.Millisecond) // its deadline passes

	before := td.d.stats.FramesDelivered.Load()
	td.d.hub.broadcast("u", msgOf(`{"n":2}`))
	if got := td.d.stats.FramesDelivered.Load() - before; got != 1 {
		t.Fatalf("%d frames written by broadcast, want 1 (the connection was taken for dead?)", got)
	}
	if got := readText(t, conn, 5*time.Second); got != `{"n":2}` {
		t.Fatalf("got %s", got)
	}
	if td.d.hub.connectionCount("u") != 1 {
		t.Fatal("the connection was closed")
	}
}

func TestLargeFanOutKeepsEveryConnectionsOrder(t *testing.T) {
	// More than writeNowMax connections: idle ones are written by fan-out
	// goroutines that broadcast does not wait for, busy ones by their
	// pumps; every connection must still get every event, in order.
	td := startDaemon(t, startRedis(t), map[string]string{"LOG_LEVEL": "warn"})
	const n, events = 60, 300
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i] = td.dial("org")
	}
	eventually(t, 5*time.Second, "registered", func() bool { return td.d.hub.connectionCount("org") == n })
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			for i := range events {
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, data, err := c.ReadMessage()
				if want := fmt.Sprintf(`{"n":%d}`, i); err != nil || string(data) != want {
					errs <- fmt.Errorf("got %s (%v), want %s", data, err, want)
					return
				}
			}
		})
	}
	for i := range events {
		td.d.hub.broadcast("org", msgOf(fmt.Sprintf(`{"n":%d}`, i)))
		if i%50 == 0 {
			time.Sleep(20 * time.Millisecond) // idle again: the next ones are claimed
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestAClaimedEventThatCannotBeWrittenAtOnceStaysFirst(t *testing.T) {
	td := startDaemon(t, startRedis(t), nil)
	conn := td.dial("u")
	eventually(t, 5*time.Second, "registered", func() bool { return td.d.hub.connectionCount("u") == 1 })
	c := onlyClient(t, td, "u")

	first, second := msgOf(`{"n":1}`), msgOf(`{"n":2}`)
	if r := c.enqueue(first, true); r != enqueueClaimed {
		t.Fatalf("idle connection: %v, want claimed", r)
	}
	if r := c.enqueue(second, true); r != enqueued {
		t.Fatalf("claimed connection: %v, want queued", r)
	}
	c.out.mu.Lock() // the read pump writing: writeNow hands over to a pump
	c.writeNow(first)
	c.out.mu.Unlock()
	for _, want := range []string{`{"n":1}`, `{"n":2}`} {
		if got := readText(t, conn, 5*time.Second); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	}
}

func TestWriteNowSendsAPreparedMessage(t *testing.T) {
	td := startDaemon(t, startRedis(t), nil)
	conn := td.dial("u")
	eventually(t, 5*time.Second, "registered", func() bool { return td.d.hub.connectionCount("u") == 1 })
	c := onlyClient(t, td, "u")
	msg := msgOf(`{"n":1}`)
	// What broadcast does for a user with preparedMin connections or more.
	pm, err := websocket.NewPreparedMessage(websocket.TextMessage, []byte(`{"prepared":true}`))
	if err != nil {
		t.Fatal(err)
	}
	msg.prepared = pm
	if r := c.enqueue(msg, true); r != enqueueClaimed {
		t.Fatalf("%v, want claimed", r)
	}
	c.writeNow(msg)
	if got := readText(t, conn, 5*time.Second); got != `{"prepared":true}` {
		t.Fatalf("got %s: the frame was not the prepared one", got)
	}
}

// onlyClient returns the one connection of username in td.
func onlyClient(t *testing.T, td *testDaemon, username string) *Client {
	t.Helper()
	s := td.d.hub.shard(username)
	s.mu.RLock()
	defer s.mu.RUnlock()
	if len(s.users[username]) != 1 {
		t.Fatalf("%s has %d connections, want 1", username, len(s.users[username]))
	}
	for c := range s.users[username] {
		return c
	}
	return nil
}

// upgradedConn returns the server side of a WebSocket connection upgraded
// the daemon's way (as the daemon's Upgrader does, with a write-buffer
// pool); both ends are closed when b ends.
func upgradedConn(b *testing.B) upgraded {
	b.Helper()
	conns := make(chan upgraded, 1)
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, err := upgrade(&websocket.Upgrader{WriteBufferPool: &sync.Pool{}}, w, r)
		if err != nil {
			b.Error(err)
			return
		}
		conns <- u
	}))
	b.Cleanup(server.Close)
	client, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(server.URL, "http"), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { client.Close() })
	u := <-conns
	b.Cleanup(func() { u.conn.Close() })
	return u
}

// dropBatch empties a corked batch without sending it.
func dropBatch(out *batchConn) {
	out.mu.Lock()
	*out.buf = (*out.buf)[:0]
	out.mu.Unlock()
}
