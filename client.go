package main

import (
	"bufio"
	"errors"
	"io"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/time/rate"
)

const (
	// maxClientMessageSize is the largest frame a client may send: the
	// daemon is push-only, so clients send little more than pongs.
	maxClientMessageSize = 4096
	// clientMessageRate and clientMessageBurst bound the data frames a client
	// may send (some frontends send application-level pings); past that the
	// connection is closed with disconnectFlood.
	clientMessageRate  = 10
	clientMessageBurst = 20
	// closeGrace is how long the write pump waits for the client to answer
	// a close frame before it drops the TCP connection.
	closeGrace = time.Second
)

// clientSettings are the per-connection limits and timings, shared by all
// clients of a hub.
type clientSettings struct {
	sendQueueSize  int
	sendQueueBytes int
	pingInterval   time.Duration
	pongWait       time.Duration
	writeWait      time.Duration
}

// enqueueResult says what happened to a message offered to a client.
type enqueueResult int

const (
	enqueued enqueueResult = iota
	// enqueueClaimed: not queued; the caller holds the write pump's place
	// and writes msg itself with writeNow.
	enqueueClaimed
	// enqueueOverflow: the queue was full; the client is being disconnected.
	enqueueOverflow
	// enqueueClosing: the client was already being disconnected.
	enqueueClosing
)

// Client is one WebSocket connection of one user. Its read pump runs for
// the life of the connection; its write pump runs only while there is
// something to write (queued messages, a pong, a ping, a close) and exits
// when the queue is empty, so an idle connection holds one goroutine, no
// write buffer and no ticker. The write pump is the only goroutine that
// writes to or closes the socket; at most one runs at a time. The hub owns
// both through its WaitGroup: one count for the read pump, one for the write
// side, released by the write pump that closes the socket.
type Client struct {
	hub      *Hub
	conn     *websocket.Conn
	settings *clientSettings
	// out is the socket under conn, corked by the write pump for each batch.
	out *batchConn
	// in is gorilla's read buffer, and raw the socket's file descriptor:
	// the read pump waits for bytes on raw while in is empty
	// (awaitReadable). Either may be nil, and the read pump then waits in
	// gorilla.
	in  *bufio.Reader
	raw syscall.RawConn
	// username is the user whose events this connection receives.
	username string
	// remote is the client address, for logs.
	remote string
	// expires is when the connection's token expires (zero: never).
	expires time.Time
	// expiry, when expires is set, closes the connection at that time with
	// disconnectExpired. register starts it; the read pump stops it.
	expiry *time.Timer
	// pingAt is when the next ping is due (UnixNano); only the hub's
	// pinger uses it once the client is registered.
	pingAt int64

	// mu guards everything below.
	mu sync.Mutex
	// sendQueue holds messages the write pump has not written yet; the
	// byte slices are shared by every client of the user and never changed.
	sendQueue   []*message
	queuedBytes int
	// pendingPong is the payload of a client ping still to be answered.
	pendingPong *string
	// pingDue is set when a ping is to be sent.
	pingDue bool
	// closing is set once, when the connection is to end.
	closing *disconnect
	// writing is true while a write pump runs, and from the end of the
	// connection on, so that no pump starts after it.
	writing bool

	// unflushed is a message writeNow handed to the socket only in part;
	// the write pump it starts finishes the write and counts it.
	unflushed *message
	// readEnded is set when the read pump returns; readDone, made only
	// when the write pump waits for that (finish), is closed then.
	readEnded bool
	readDone  chan struct{}
}

// newClient makes the client of an upgraded connection; u is zero for a
// client without a connection (hub tests), which never starts a write pump.
func newClient(hub *Hub, u upgraded, username, remote string) *Client {
	c := &Client{
		hub:      hub,
		conn:     u.conn,
		out:      u.out,
		in:       u.in,
		settings: &hub.settings,
		username: username,
		remote:   remote,
	}
	if u.out != nil && u.in != nil {
		c.raw = u.out.raw
	}
	return c
}

// enqueue offers msg to the client without blocking; the caller adds what
// was enqueued to the hub's send-queue pressure. When the send queue is
// over its count or byte bound the queue is discarded and the client is
// closed with disconnectSlow; an empty queue always takes one message, so
// any message up to MAX_MESSAGE_BYTES can be delivered.
//
// With claim set, a client with nothing queued and no write pump running
// is not given a pump: enqueue returns enqueueClaimed and the caller writes
// msg with writeNow.
func (c *Client) enqueue(msg *message, claim bool) enqueueResult {
	c.mu.Lock()
	if c.closing != nil {
		c.mu.Unlock()
		return enqueueClosing
	}
	if claim && !c.writing && len(c.sendQueue) == 0 && c.pendingPong == nil && !c.pingDue && c.out != nil && c.out.raw != nil {
		c.writing = true
		c.mu.Unlock()
		return enqueueClaimed
	}
	if n := len(c.sendQueue); n > 0 && (n >= c.settings.sendQueueSize || c.queuedBytes+len(msg.data) > c.settings.sendQueueBytes) {
		c.closing = &disconnectSlow
		c.hub.stats.SlowDisconnects.Add(1)
		c.hub.queued(-n, -c.queuedBytes)
		clear(c.sendQueue)
		c.sendQueue = nil
		c.queuedBytes = 0
		start := c.startPumpLocked()
		c.mu.Unlock()
		c.spawnPump(start)
		return enqueueOverflow
	}
	c.sendQueue = append(c.sendQueue, msg)
	c.queuedBytes += len(msg.data)
	start := c.startPumpLocked()
	c.mu.Unlock()
	c.spawnPump(start)
	return enqueued
}

// close asks the write pump to end the connection for reason d. Messages
// already queued are still written first, unless the queue overflowed.
// Only the first reason counts.
func (c *Client) close(d disconnect) {
	c.mu.Lock()
	if c.closing == nil {
		c.closing = &d
	}
	start := c.startPumpLocked()
	c.mu.Unlock()
	c.spawnPump(start)
}

// expire closes the connection because its token expired.
func (c *Client) expire() {
	c.mu.Lock()
	first := c.closing == nil
	if first {
		c.closing = &disconnectExpired
		c.hub.stats.ExpiredDisconnects.Add(1)
	}
	start := c.startPumpLocked()
	c.mu.Unlock()
	c.spawnPump(start)
}

// requestPing asks for a ping; the hub's pinger calls it once per
// pingInterval.
func (c *Client) requestPing() {
	c.mu.Lock()
	if c.closing != nil {
		c.mu.Unlock()
		return
	}
	c.pingDue = true
	start := c.startPumpLocked()
	c.mu.Unlock()
	c.spawnPump(start)
}

// answerPing queues the pong for a client's ping; the write pump, the
// socket's only writer, sends it.
func (c *Client) answerPing(appData string) {
	c.mu.Lock()
	c.pendingPong = &appData
	start := c.startPumpLocked()
	c.mu.Unlock()
	c.spawnPump(start)
}

// startPumpLocked claims the write pump's place when no pump runs; the
// caller, after unlocking c.mu, starts one when it returns true.
func (c *Client) startPumpLocked() bool {
	if c.writing || c.conn == nil {
		return false
	}
	c.writing = true
	return true
}

func (c *Client) spawnPump(start bool) {
	if start {
		go c.writePump()
	}
}

// takeWork swaps out the send queue, the pending pong, a due ping and the
// close reason for the write pump. done is the batch the pump has finished
// writing. When there is nothing to do it gives up the pump's place
// (idle is true) and the pump must return: the next piece of work starts
// a new one.
func (c *Client) takeWork(done []*message) (w work, idle bool) {
	clear(done)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.hasWorkLocked() {
		c.writing = false
		if cap(done) <= maxKeptQueue && cap(c.sendQueue) == 0 {
			// Keep one slice for the next message, but not a long one.
			c.sendQueue = done[:0]
		}
		return work{}, true
	}
	w.batch = c.sendQueue
	c.sendQueue = nil
	if cap(done) <= maxKeptQueue {
		c.sendQueue = done[:0]
	}
	if len(w.batch) > 0 {
		c.hub.queued(-len(w.batch), -c.queuedBytes)
	}
	c.queuedBytes = 0
	w.pong, c.pendingPong = c.pendingPong, nil
	w.ping, c.pingDue = c.pingDue, false
	w.closing = c.closing
	return w, false
}

// hasWorkLocked reports whether there is anything for a write pump to do;
// c.mu must be held.
func (c *Client) hasWorkLocked() bool {
	return len(c.sendQueue) > 0 || c.pendingPong != nil || c.pingDue || c.closing != nil
}

// maxKeptQueue is the longest send-queue slice a client keeps for reuse.
const maxKeptQueue = 64

// work is what the write pump takes in one swap.
type work struct {
	batch   []*message
	pong    *string
	ping    bool
	closing *disconnect
}

// writeNow writes msg, claimed by enqueue, on the caller's goroutine (the
// subscriber's or a fan-out goroutine of broadcast) without ever waiting
// for the socket: a connection whose
// socket takes the frame at once needs no goroutine at all, and nothing is
// woken. Whatever the socket does not take at once, and any work that
// arrived meanwhile, goes to a write pump.
func (c *Client) writeNow(msg *message) {
	if !c.out.tryCork() {
		// gorilla is answering the client from the read pump (a close or
		// a protocol error) and may be waiting for the socket: the
		// message goes to a write pump rather than wait here.
		// Ahead of what was queued since it was claimed.
		c.mu.Lock()
		c.sendQueue = slices.Insert(c.sendQueue, 0, msg)
		c.queuedBytes += len(msg.data)
		c.mu.Unlock()
		c.hub.queued(1, len(msg.data))
		go c.writePump()
		return
	}
	var err error
	if msg.prepared != nil {
		err = c.conn.WritePreparedMessage(msg.prepared)
	} else {
		err = c.conn.WriteMessage(websocket.TextMessage, msg.data)
	}
	done := false
	if err == nil {
		done, err = c.out.tryFlush()
	}
	switch {
	case err != nil:
		c.close(disconnectGone)
		go c.writePump()
	case !done:
		c.unflushed = msg
		go c.writePump()
	default:
		c.hub.deliveryLatency.Observe(time.Since(msg.received).Seconds())
		c.hub.stats.FramesDelivered.Add(1)
		c.mu.Lock()
		more := c.hasWorkLocked()
		c.writing = more
		c.mu.Unlock()
		if more {
			go c.writePump()
		}
	}
}

// writePump writes queued messages, pongs and pings to the socket, each
// batch with one write, and returns when there is nothing left to do or the
// connection ends. Only one runs at a time (startPumpLocked).
func (c *Client) writePump() {
	if msg := c.unflushed; msg != nil {
		// writeNow's frame, partly written: the rest first.
		c.unflushed = nil
		if _, err := c.out.flush(time.Now().Add(c.settings.writeWait)); err != nil {
			c.close(disconnectGone)
			c.end()
			return
		}
		c.delivered([]*message{msg}, 0, nil)
	}
	var batch []*message
	for {
		w, idle := c.takeWork(batch)
		if idle {
			return
		}
		batch = w.batch
		if err := c.writeBatch(w); err != nil {
			c.close(disconnectGone)
			c.end()
			return
		}
		if w.closing != nil {
			c.finish(*w.closing)
			c.end()
			return
		}
	}
}

// writeBatch writes w's pong, ping and messages, corked, flushing every
// batchFlushBytes. It counts the frames that reached the socket.
func (c *Client) writeBatch(w work) error {
	c.out.cork()
	deadline := time.Now().Add(c.settings.writeWait)
	// gorilla checks its own deadline setting on every write; while corked
	// the socket ignores it and flush applies it.
	if err := c.conn.SetWriteDeadline(deadline); err != nil {
		return err
	}
	if w.pong != nil {
		if err := c.conn.WriteMessage(websocket.PongMessage, []byte(*w.pong)); err != nil {
			return err
		}
	}
	if w.ping {
		if err := c.conn.WriteMessage(websocket.PingMessage, nil); err != nil {
			return err
		}
	}
	// w.batch[from:] are the messages since the last flush; control is the
	// bytes of control frames ahead of them in the buffer.
	from, control := 0, c.out.buffered()
	for i, msg := range w.batch {
		var err error
		if msg.prepared != nil {
			err = c.conn.WritePreparedMessage(msg.prepared)
		} else {
			err = c.conn.WriteMessage(websocket.TextMessage, msg.data)
		}
		if err != nil {
			return err
		}
		last := i == len(w.batch)-1
		if !last && c.out.buffered() < batchFlushBytes {
			continue
		}
		n, err := c.out.flush(deadline)
		c.delivered(w.batch[from:i+1], n-control, err)
		if err != nil {
			return err
		}
		from, control = i+1, 0
		if !last {
			c.out.cork()
		}
	}
	if len(w.batch) == 0 {
		if _, err := c.out.flush(deadline); err != nil {
			return err
		}
	}
	return nil
}

// delivered counts the messages of chunk that fit in the n bytes written
// and observes their latency; with err == nil all of them did.
func (c *Client) delivered(chunk []*message, n int, err error) {
	if err != nil {
		k := 0
		for ; k < len(chunk); k++ {
			size := frameSize(len(chunk[k].data))
			if n < size {
				break
			}
			n -= size
		}
		chunk = chunk[:k]
	}
	now := time.Now()
	for _, msg := range chunk {
		c.hub.deliveryLatency.Observe(now.Sub(msg.received).Seconds())
	}
	c.hub.stats.FramesDelivered.Add(uint64(len(chunk)))
}

// end closes the socket and releases the write side's count in the hub.
// The pump's place is never given back, so no pump starts after it.
func (c *Client) end() {
	_ = c.conn.Close()
	c.cleanup()
	c.hub.wg.Done()
}

// finish sends the close frame for d, if any, and waits briefly for the
// client to answer it before the deferred Close drops the connection.
func (c *Client) finish(d disconnect) {
	if d.code == 0 {
		return
	}
	msg := websocket.FormatCloseMessage(d.code, d.reason)
	if err := c.conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(c.settings.writeWait)); err != nil {
		return
	}
	c.mu.Lock()
	if c.readEnded {
		c.mu.Unlock()
		return
	}
	c.readDone = make(chan struct{})
	done := c.readDone
	c.mu.Unlock()
	timer := time.NewTimer(closeGrace)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
	}
}

// readPump reads the client's frames so that pings, pongs and close frames
// are processed, enforces the read limits, and unregisters the client when
// the connection ends.
func (c *Client) readPump() {
	defer c.hub.wg.Done()
	defer func() {
		c.mu.Lock()
		c.readEnded = true
		if c.readDone != nil {
			close(c.readDone)
		}
		c.mu.Unlock()
		if c.expiry != nil {
			c.expiry.Stop()
		}
		c.close(disconnectGone)
		remaining := c.hub.unregister(c)
		c.hub.logger.Info("Client unregistered", "username", c.username, "remaining_for_user", remaining)
	}()

	c.conn.SetReadLimit(maxClientMessageSize)
	extend := func() { _ = c.conn.SetReadDeadline(time.Now().Add(c.settings.pongWait)) }
	extend()
	c.conn.SetPongHandler(func(string) error { extend(); return nil })
	c.conn.SetPingHandler(func(appData string) error {
		extend()
		c.answerPing(appData)
		return nil
	})

	var limiter *rate.Limiter
	for {
		if err := c.awaitReadable(); err != nil {
			return // the pong wait expired, or the socket was closed
		}
		_, r, err := c.conn.NextReader()
		if err == nil {
			// Reading the whole message enforces the read limit on every
			// fragment of it.
			_, err = io.Copy(io.Discard, r)
		}
		if err != nil {
			if websocket.IsUnexpectedCloseError(err, websocket.CloseGoingAway, websocket.CloseNormalClosure, websocket.CloseNoStatusReceived) {
				c.hub.logger.Debug("Read failed", "username", c.username, "remote", c.remote, "err", err)
			}
			if errors.Is(err, websocket.ErrReadLimit) {
				// gorilla has sent the 1009 close frame.
				c.drainSocket()
			}
			return
		}
		extend()
		if limiter == nil {
			// Most clients never send a data frame: made on the first one.
			limiter = rate.NewLimiter(clientMessageRate, clientMessageBurst)
		}
		if !limiter.Allow() {
			c.hub.stats.FloodDisconnects.Add(1)
			c.close(disconnectFlood)
			c.drainFrames()
			return
		}
	}
}

// awaitReadable returns when the socket has bytes (or an end or error) for
// gorilla to read, or with the error that ends the wait: the pong wait's
// read deadline, or a closed socket. An idle connection's read pump parks
// here rather than inside gorilla's read path, whose depth (about 1.7 KB of
// frames) would double the goroutine's stack to 4 KiB: parked here, its
// stack stays at (or the GC shrinks it back to) 2 KiB.
func (c *Client) awaitReadable() error {
	if c.raw == nil || c.in.Buffered() > 0 {
		return nil
	}
	return c.raw.Read(socketReadable)
}

// socketReadable reports whether a socket has something to read without
// reading it: bytes, the peer's end of stream, or an error for the next
// read to report. It is called again after each readiness notification.
func socketReadable(fd uintptr) bool {
	var b [1]byte
	_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err != syscall.EAGAIN && err != syscall.EINTR
}

// drainFrames reads and discards the client's frames until its answer to
// our close frame, or for at most closeGrace. Closing a socket with unread
// data resets the connection, and a browser then reports 1006 instead of
// the close code it was sent.
func (c *Client) drainFrames() {
	_ = c.conn.SetReadDeadline(time.Now().Add(closeGrace))
	for {
		_, r, err := c.conn.NextReader()
		if err == nil {
			_, err = io.Copy(io.Discard, r)
		}
		if err != nil {
			if errors.Is(err, websocket.ErrReadLimit) {
				c.drainSocket()
			}
			return
		}
	}
}

// drainSocket does what drainFrames does once gorilla can read no more
// frames (after ErrReadLimit): it discards the socket's bytes until the
// client closes it, or for at most closeGrace.
func (c *Client) drainSocket() {
	nc := c.conn.NetConn()
	_ = nc.SetReadDeadline(time.Now().Add(closeGrace))
	_, _ = io.Copy(io.Discard, nc)
}

// cleanup runs when the write pump ends: it takes what is left in the send
// queue off the hub's pressure count, and logs a connection the daemon
// itself ended; the ordinary ends are logged by the read pump as "Client
// unregistered".
func (c *Client) cleanup() {
	c.mu.Lock()
	d := c.closing
	frames, bytes := len(c.sendQueue), c.queuedBytes
	clear(c.sendQueue)
	c.sendQueue = c.sendQueue[:0]
	c.queuedBytes = 0
	c.mu.Unlock()
	if frames > 0 {
		c.hub.queued(-frames, -bytes)
	}
	switch {
	case d == nil:
	case *d == disconnectSlow, *d == disconnectFlood:
		c.hub.logger.Warn("Closing client", "username", c.username, "remote", c.remote, "code", d.code, "reason", d.reason)
	case *d == disconnectExpired:
		c.hub.logger.Info("Closing client", "username", c.username, "remote", c.remote, "code", d.code, "reason", d.reason)
	}
}
