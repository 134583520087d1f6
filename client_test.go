package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"fanout/internal/wsconn"
)

func TestBurstOf2000EventsToOneUserAllArriveInOrder(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{"LOG_LEVEL": "info"})
	td.waitReady()
	conn := td.dial("burst")

	const n = 2000
	pipe := td.pub.Pipeline()
	for i := range n {
		pipe.Publish(context.Background(), channelPrefix+"burst", event("burst", i))
	}
	if _, err := pipe.Exec(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if got, want := readText(t, conn, 10*time.Second), event("burst", i); got != want {
			t.Fatalf("event %d = %s, want %s", i, got, want)
		}
	}
	if got := td.d.stats.FramesDropped.Load() + td.d.stats.SlowDisconnects.Load(); got != 0 {
		t.Fatalf("%d drops or slow disconnects for a client that reads", got)
	}
}

func TestSlowClientIsDisconnectedAloneAndOthersKeepTheirPace(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{
		"SEND_QUEUE_BYTES": "65536",
		"WRITE_WAIT":       "5s",
		"LOG_LEVEL":        "info",
	})
	td.waitReady()
	stuck := td.dial("slow") // reads nothing until it has overflowed
	fast := td.dial("fast")

	// The fast user reads everything published to it, concurrently.
	fastGot := make(chan string, 4096)
	go func() {
		defer close(fastGot)
		for {
			_ = fast.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, data, err := fast.ReadMessage()
			if err != nil {
				return
			}
			fastGot <- string(data)
		}
	}()

	big := `{"type":"blob","data":"` + strings.Repeat("x", 32<<10) + `"}`
	published := 0
	for i := 0; i < 2000 && td.d.stats.SlowDisconnects.Load() == 0; i++ {
		td.publish("slow", big)
		td.publish("fast", event("fast", i))
		published++
		// The fast user is never held up by the stuck one.
		select {
		case got := <-fastGot:
			if want := event("fast", i); got != want {
				t.Fatalf("fast user got %s, want %s", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("fast user stalled at event %d", i)
		}
	}
	if td.d.stats.SlowDisconnects.Load() != 1 {
		t.Fatalf("no slow disconnect after %d MiB to a client that does not read", published*len(big)>>20)
	}
	if td.d.hub.connectionCount("fast") != 1 {
		t.Fatal("the fast user's connection was dropped too")
	}

	// The stuck client, reading again, gets what was already on the wire and
	// then the close frame.
	err := readUntilError(stuck)
	if !websocket.IsCloseError(err, websocket.CloseTryAgainLater) {
		t.Fatalf("slow client read error %v, want close 1013", err)
	}
	eventually(t, 5*time.Second, "slow client unregistered", func() bool { return td.d.hub.connectionCount("slow") == 0 })
	eventually(t, 5*time.Second, "slow close logged", func() bool {
		return strings.Contains(td.logs.String(), `msg="Closing client" username=slow`)
	})
}

func TestClientThatNeverReadsIsDroppedAndMemoryStaysBounded(t *testing.T) {
	// A write blocked on the full socket ends the connection after
	// WRITE_WAIT; it counts as slow when the send queue overflowed
	// meanwhile. 2 s lets it overflow first: at 300 ms a publisher slowed
	// by other packages' tests on the same cores now and then had not
	// published enough by then.
	td := startDaemon(t, startRedis(t), map[string]string{
		"WRITE_WAIT": "2s",
		"LOG_LEVEL":  "info",
	})
	td.waitReady()
	_ = td.dial("stuck") // never reads, never closes

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	big := `{"type":"blob","data":"` + strings.Repeat("x", 256<<10) + `"}`
	const count = 160 // 40 MiB to a client that reads nothing
	td.publishPaced("stuck", big, count)
	eventually(t, 10*time.Second, "stuck client dropped", func() bool { return td.d.hub.connectionCount("stuck") == 0 })
	if td.d.stats.SlowDisconnects.Load() != 1 {
		t.Fatalf("SlowDisconnects = %d, want 1", td.d.stats.SlowDisconnects.Load())
	}
	if td.d.stats.RedisFailures.Load() != 0 {
		t.Fatal("the Redis subscription broke while a client was stuck")
	}

	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 16<<20 {
		t.Fatalf("heap grew by %d MiB after 40 MiB to a stuck client", grown>>20)
	}
}

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

func TestIdleConnectionHoldsNoGoroutine(t *testing.T) {
	// Measured at steady state: after an event and two rounds of pings and
	// pongs each way, not just after the handshake.
	td := startDaemon(t, startRedis(t), map[string]string{"LOG_LEVEL": "warn", "PING_INTERVAL": "1s", "PONG_WAIT": "30s", "PROBE_TIMEOUT": probeTimeoutUnderLoad})
	td.waitReady()
	// The daemon's own goroutines (the subscriber, the recorder) grow
	// their stacks on the first event: that is not per connection, so
	// one event goes through before the baseline.
	warm := td.dial("warm-up")
	td.publish("warm-up", `{"type":"x"}`)
	if got := readText(t, warm, 5*time.Second); got != `{"type":"x"}` {
		t.Fatalf("got %s", got)
	}
	warm.Close()
	eventually(t, 5*time.Second, "warm-up connection gone", func() bool { return td.d.hub.connections.Load() == 0 })
	g0, s0 := goroutinesAndStack()
	const n = 1000
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i] = td.dial(fmt.Sprintf("user%d", i))
	}
	eventually(t, 5*time.Second, "all registered", func() bool { return td.d.hub.connections.Load() == n })
	// An event to each (a write pump runs, writes and returns).
	for i := range n {
		td.publish(fmt.Sprintf("user%d", i), `{"type":"x"}`)
	}
	for _, c := range conns {
		if got := readText(t, c, 5*time.Second); got != `{"type":"x"}` {
			t.Fatalf("got %s", got)
		}
	}
	// Two ping rounds each way, on the raw sockets so that the test holds
	// no reader goroutine per connection: each client sends a pong (as if
	// answering the daemon's ping) and a ping, and reads until the daemon's
	// pong for it arrives, so both were read by the daemon's read pump.
	// The daemon's own pings (every second) arrive in between.
	for round := range 2 {
		for _, c := range conns {
			pingRound(t, c.NetConn(), fmt.Sprintf("r%d", round))
		}
	}
	time.Sleep(1500 * time.Millisecond) // a ping from the daemon to every connection
	// The read sides are parked (wsconn's Park) and no write pump runs:
	// the only goroutines left are the parking lot's one and the odd
	// pump the pinger started.
	checkIdleCost(t, n, g0, s0, "the read side parks; no write pump while idle")
	for _, c := range conns {
		c.Close()
	}
}

// goroutinesAndStack reads the goroutine count and the stack in use once
// the GC has shrunk the stacks that have room to spare.
func goroutinesAndStack() (goroutines int, stack uint64) {
	var ms runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&ms)
	return runtime.NumGoroutine(), ms.StackInuse
}

// checkIdleCost fails the test unless the n idle connections opened since
// goroutinesAndStack read g0 and s0 hold no goroutine and (without the race
// detector, which doubles stacks) well under a goroutine's 2 KiB of stack
// each. The pinger keeps starting short-lived write sides (a quarter of the
// connections every quarter of a ping period): it measures between them.
func checkIdleCost(t *testing.T, n, g0 int, s0 uint64, why string) {
	t.Helper()
	// What is left of the stack is spans the runtime keeps for the
	// goroutines that came and went (handshakes, write sides): under a
	// goroutine's 2 KiB, once the GC has freed them.
	const maxStackPer = 1 << 10
	var perG, stackPer float64
	for try := 0; try < 50; try++ {
		if try > 0 {
			time.Sleep(20 * time.Millisecond)
		}
		g1, s1 := goroutinesAndStack()
		perG = float64(g1-g0) / float64(n)
		stackPer = float64(int64(s1)-int64(s0)) / float64(n)
		if perG <= 0.05 && (raceEnabled || stackPer <= maxStackPer) {
			break
		}
	}
	if perG > 0.05 {
		t.Errorf("%.2f goroutines per idle connection, want none (%s)", perG, why)
	}
	t.Logf("%.0f bytes of goroutine stack per idle connection", stackPer)
	if !raceEnabled && stackPer > maxStackPer {
		t.Errorf("%.0f bytes of goroutine stack per idle connection, want well under a goroutine's 2 KiB (%s)", stackPer, why)
	}
}

// pingRound plays one ping round from a client's raw socket: it sends a pong
// and a ping with payload tag, and reads until the daemon's pong for tag.
func pingRound(t *testing.T, nc net.Conn, tag string) {
	t.Helper()
	out := append(maskedFrame(websocket.PongMessage, nil), maskedFrame(websocket.PingMessage, []byte(tag))...)
	// gorilla answered any ping it read before with a write deadline of
	// a second, which stays on the socket.
	_ = nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := nc.Write(out); err != nil {
		t.Fatal(err)
	}
	want := append([]byte{0x80 | websocket.PongMessage, byte(len(tag))}, tag...)
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer nc.SetReadDeadline(time.Time{})
	var seen []byte
	buf := make([]byte, 512)
	for !bytes.Contains(seen, want) {
		n, err := nc.Read(buf)
		if err != nil {
			t.Fatalf("waiting for the pong %q: %v", tag, err)
		}
		seen = append(seen, buf[:n]...)
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
			var msgs []*message
			for i := range tc.messages {
				msg := msgOf(fmt.Sprintf(`{"n":%d,"pad":"%s"}`, i, strings.Repeat("x", tc.size-len(fmt.Sprintf(`{"n":%d,"pad":""}`, i)))))
				if tc.prepared {
					msg.prepared, _ = websocket.NewPreparedMessage(websocket.TextMessage, msg.data)
				}
				msgs = append(msgs, msg)
			}
			count := func(c net.Conn) net.Conn { return countingConn{Conn: c, writes: writes} }
			// The handshake's answer is not counted.
			conn := serveQueuedClient(t, hub, count, msgs, func() { writes.Store(0) })
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

func TestBroadcastNeverWaitsForASocketAnotherGoroutineWritesTo(t *testing.T) {
	// gorilla answers a client's close frame or protocol error from the read
	// pump, and that write may wait up to a second for a full socket while
	// it holds the connection. broadcast, on the Redis reader, must not
	// wait for it: the event goes to a write pump instead.
	td := startDaemon(t, startRedis(t), nil)
	conn, c := dialOnlyClient(t, td, "u")

	unblock := c.conn.HoldWrites() // the read pump's write, stuck on the socket
	release := time.AfterFunc(500*time.Millisecond, unblock)
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
	conn, c := dialOnlyClient(t, td, "u")

	// A pump writes the first event, with the 200 ms deadline.
	c.mu.Lock()
	c.sendQueue = append(c.sendQueue, msgOf(`{"n":1}`))
	start := c.takeRightLocked()
	c.mu.Unlock()
	c.startPump(start)
	if got := readText(t, conn, 5*time.Second); got != `{"n":1}` {
		t.Fatalf("got %s", got)
	}
	eventually(t, 5*time.Second, "pump done", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.writer == writeIdle
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

func TestAClaimedEventThatCannotBeWrittenAtOnceStaysFirst(t *testing.T) {
	td := startDaemon(t, startRedis(t), nil)
	conn, c := dialOnlyClient(t, td, "u")

	first, second := msgOf(`{"n":1}`), msgOf(`{"n":2}`)
	if r := c.enqueue(first, true); r != enqueueClaimed {
		t.Fatalf("idle connection: %v, want claimed", r)
	}
	if r := c.enqueue(second, true); r != enqueued {
		t.Fatalf("claimed connection: %v, want queued", r)
	}
	release := c.conn.HoldWrites() // the read pump writing: writeNow hands over to a pump
	c.writeNow(first)
	release()
	for _, want := range []string{`{"n":1}`, `{"n":2}`} {
		if got := readText(t, conn, 5*time.Second); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	}
}

func TestWriteNowSendsAPreparedMessage(t *testing.T) {
	td := startDaemon(t, startRedis(t), nil)
	conn, c := dialOnlyClient(t, td, "u")
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

// dialOnlyClient dials td as username, the user's only connection, and
// returns both sides once the daemon has registered it.
func dialOnlyClient(t *testing.T, td *testDaemon, username string) (*websocket.Conn, *wsClient) {
	t.Helper()
	conn := td.dial(username)
	eventually(t, 5*time.Second, "registered", func() bool { return td.d.hub.connectionCount(username) == 1 })
	s := td.d.hub.shard(username)
	s.mu.RLock()
	defer s.mu.RUnlock()
	for c := range s.users[username] {
		return conn, c.t.(*wsClient)
	}
	t.Fatalf("%s has no connection", username)
	return nil, nil
}

func TestAClientThatClosesMidBurstGetsItsCloseCodeBack(t *testing.T) {
	t.Parallel()
	// The client's close frame arrives while a write pump is writing a
	// long batch (more than the socket buffers hold, the client reading
	// nothing yet): the answer must still reach it, with its own code, not
	// be lost in the batch (which the client would see as 1006), and
	// without the rest of the burst before it.
	td := startDaemon(t, startRedis(t), map[string]string{"LOG_LEVEL": "warn", "SEND_QUEUE_BYTES": "16777216", "SEND_QUEUE_SIZE": "10000"})
	payload := fmt.Sprintf(`{"pad":"%s"}`, strings.Repeat("x", 1000))
	const events = 3000
	for i := range 50 {
		conn, c := dialOnlyClient(t, td, "u")
		// Small socket buffers on both sides, so that the burst is far
		// more than they hold on any kernel.
		if err := conn.NetConn().(*net.TCPConn).SetReadBuffer(64 << 10); err != nil {
			t.Fatal(err)
		}
		if err := c.conn.SetSendBuffer(64 << 10); err != nil {
			t.Fatal(err)
		}
		for range events {
			td.d.hub.broadcast("u", msgOf(payload))
		}
		if err := conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		read := 0
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		var err error
		for err == nil {
			if _, _, err = conn.ReadMessage(); err == nil {
				read++
			}
		}
		if !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
			t.Fatalf("round %d: the client read %v after %d events, want its close code 1000 back", i, err, read)
		}
		// What was in the socket buffers when it closed, not the rest of
		// the burst: the answer comes at once.
		if read >= events {
			t.Fatalf("round %d: the client read all %d events before the answer to its close", i, read)
		}
		t.Logf("round %d: %d of %d events before the close answer", i, read, events)
		conn.Close()
		eventually(t, 5*time.Second, "unregistered", func() bool { return td.d.hub.connectionCount("u") == 0 })
	}
	eventually(t, 5*time.Second, "queues emptied", func() bool { return td.d.hub.queuedFrames.Load() == 0 && td.d.hub.queuedBytes.Load() == 0 })
}

func TestNoFrameIsWrittenOnceTheSendQueueOverflowed(t *testing.T) {
	// A fan-out goroutine claims an idle connection, and before it writes,
	// later events fill the queue past its bound: the claimed frame must
	// not go out after the overflow decided to drop the queue, only the
	// close frame 1013.
	td := startDaemon(t, startRedis(t), map[string]string{"SEND_QUEUE_SIZE": "4"})
	conn, c := dialOnlyClient(t, td, "u")
	claimed := msgOf(`{"n":0}`)
	if r := c.enqueue(claimed, true); r != enqueueClaimed {
		t.Fatalf("idle connection: %v, want claimed", r)
	}
	for i := 1; ; i++ {
		if r := c.enqueue(msgOf(fmt.Sprintf(`{"n":%d}`, i)), true); r == enqueueOverflow {
			break
		} else if r != enqueued || i > 10 {
			t.Fatalf("event %d: %v", i, r)
		}
	}
	c.writeNow(claimed)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, data, err := conn.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseTryAgainLater) {
		t.Fatalf("the client read %q %v, want only the close frame 1013", data, err)
	}
	if got := td.d.stats.FramesDelivered.Load(); got != 0 {
		t.Fatalf("%d frames delivered after the overflow", got)
	}
}

func TestTheWriteRightMovesOnlyAsDocumented(t *testing.T) {
	td := startDaemon(t, startRedis(t), nil)
	conn, c := dialOnlyClient(t, td, "u")
	right := func() writeRight {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.writer
	}
	if r := right(); r != writeIdle {
		t.Fatalf("a new connection: %v, want idle", r)
	}
	first, second := msgOf(`{"n":1}`), msgOf(`{"n":2}`)
	if c.enqueue(first, true) != enqueueClaimed || right() != writeDirect {
		t.Fatalf("idle → direct: %v", right())
	}
	c.mu.Lock()
	took := c.takeRightLocked()
	c.mu.Unlock()
	if took {
		t.Fatal("a pump took the right while broadcast held it")
	}
	if c.enqueue(second, true) != enqueued || right() != writeDirect {
		t.Fatalf("work queued while direct: %v", right())
	}
	c.writeNow(first) // direct → pumping (second is queued) → idle
	for _, want := range []string{`{"n":1}`, `{"n":2}`} {
		if got := readText(t, conn, 5*time.Second); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	}
	eventually(t, 5*time.Second, "pumping → idle", func() bool { return right() == writeIdle })
	c.disconnect(disconnectShutdown) // idle → pumping → ended
	eventually(t, 5*time.Second, "pumping → ended", func() bool { return right() == writeEnded })
	if r := c.enqueue(msgOf(`{"n":3}`), true); r != enqueueClosing || right() != writeEnded {
		t.Fatalf("after the end: %v, right %v", r, right())
	}
}

// wrappingListener hands out its accepted connections wrapped by wrap.
type wrappingListener struct {
	net.Listener
	wrap func(net.Conn) net.Conn
}

func (l wrappingListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return l.wrap(conn), nil
}

// serveQueuedClient serves one WebSocket connection of user "u" in hub,
// over a socket wrapped by wrap, whose write pump starts with msgs already
// queued: it finds them all in its first take. queued, if set, runs once
// they are queued, before the pumps start. It returns the client's side.
func serveQueuedClient(t *testing.T, hub *Hub, wrap func(net.Conn) net.Conn, msgs []*message, queued func()) *websocket.Conn {
	t.Helper()
	started := make(chan struct{})
	server := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(started)
		conn, err := wsconn.Upgrade(&websocket.Upgrader{}, w, r)
		if err != nil {
			t.Errorf("upgrade: %v", err)
			return
		}
		c := newWSClient(hub, conn, "u", "test")
		if err := hub.reserve("u"); err != nil {
			t.Error(err)
			return
		}
		// The pump's write right, taken before anything is queued.
		c.writer = writePumping
		if err := hub.add(&c.Client); err != nil {
			t.Error(err)
			return
		}
		for _, msg := range msgs {
			hub.broadcast("u", msg)
		}
		if queued != nil {
			queued()
		}
		go c.writePump()
		go c.readPump()
	}))
	server.Listener = wrappingListener{Listener: server.Listener, wrap: wrap}
	server.Start()
	t.Cleanup(server.Close)
	conn := dialWS(t, "ws"+strings.TrimPrefix(server.URL, "http"), nil)
	<-started
	return conn
}

// failingConn passes writes through until one holds failOn. That write
// fails the way a socket does when the peer is gone mid-write: the frames
// before the one holding failOn reach the socket, the rest do not.
type failingConn struct {
	net.Conn
	failOn []byte
}

func (c *failingConn) Write(p []byte) (int, error) {
	at := bytes.Index(p, c.failOn)
	if at < 0 {
		return c.Conn.Write(p)
	}
	// p is whole server frames (unmasked): find where the failing one starts.
	start := 0
	for {
		n, hdr := int(p[start+1]&0x7f), 2
		switch n {
		case 126:
			n, hdr = int(binary.BigEndian.Uint16(p[start+2:])), 4
		case 127:
			n, hdr = int(binary.BigEndian.Uint64(p[start+2:])), 10
		}
		if start+hdr+n > at {
			break
		}
		start += hdr + n
	}
	written, err := c.Conn.Write(p[:start])
	if err != nil {
		return written, err
	}
	return written, errors.New("injected write failure")
}

// countingObserver counts observations.
type countingObserver struct{ n atomic.Int64 }

func (o *countingObserver) Observe(float64) { o.n.Add(1) }

func TestFramesWrittenBeforeAFailedWriteInTheirBatchAreCounted(t *testing.T) {
	hub := newHub(clientSettings{sendQueueSize: 100, sendQueueBytes: 1 << 20, pingInterval: time.Minute, pongWait: time.Minute, writeWait: 5 * time.Second},
		slog.New(slog.NewTextHandler(io.Discard, nil)), &Stats{})
	latency := &countingObserver{}
	hub.deliveryLatency = latency

	// The connection's write pump starts with five frames queued, and the
	// socket fails on the third.
	frames := []string{`{"n":1}`, `{"n":2}`, `{"n":3,"fail":true}`, `{"n":4}`, `{"n":5}`}
	var msgs []*message
	for _, f := range frames {
		msgs = append(msgs, msgOf(f))
	}
	failOn := []byte(`"fail":true`)
	conn := serveQueuedClient(t, hub, func(c net.Conn) net.Conn { return &failingConn{Conn: c, failOn: failOn} }, msgs, nil)
	for _, want := range frames[:2] {
		if got := readText(t, conn, 5*time.Second); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	}
	// Both pumps end: the write failed, and the socket was closed.
	ended := make(chan struct{})
	go func() { hub.wg.Wait(); close(ended) }()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the pumps did not end after the write failed")
	}
	if got := hub.stats.FramesDelivered.Load(); got != 2 {
		t.Errorf("FramesDelivered = %d after 2 frames were written, want 2", got)
	}
	if got := latency.n.Load(); got != 2 {
		t.Errorf("%d latencies observed after 2 frames were written, want 2", got)
	}
	if f, b := hub.queuedFrames.Load(), hub.queuedBytes.Load(); f != 0 || b != 0 {
		t.Errorf("send queues hold %d frames, %d bytes after the connection ended", f, b)
	}
}
