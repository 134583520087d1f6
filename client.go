package main

import (
	"errors"
	"io"
	"sync"
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
	// enqueueOverflow: the queue was full; the client is being disconnected.
	enqueueOverflow
	// enqueueClosing: the client was already being disconnected.
	enqueueClosing
)

// Client is one WebSocket connection of one user. Its read pump and write
// pump are its only goroutines; the write pump is the only one that writes
// to or closes the socket. The hub owns both goroutines through its
// WaitGroup and stops them through close.
type Client struct {
	hub      *Hub
	conn     *websocket.Conn
	settings *clientSettings
	// username is the user whose events this connection receives.
	username string
	// remote is the client address, for logs.
	remote string
	// expires is when the connection's token expires (zero: never).
	expires time.Time
	// expiry, when expires is set, closes the connection at that time with
	// disconnectExpired. A timer rather than a case in the write pump's
	// select: that case made every pump's stack bigger, token or not.
	// register starts it; the read pump stops it.
	expiry *time.Timer

	// mu guards sendQueue, queuedBytes, pendingPong and closing.
	mu sync.Mutex
	// sendQueue holds messages the write pump has not written yet; the
	// byte slices are shared by every client of the user and never changed.
	sendQueue   []*message
	queuedBytes int
	// pendingPong is the payload of a client ping still to be answered.
	pendingPong *string
	// closing is set once, when the connection is to end.
	closing *disconnect

	// wake tells the write pump there is work (capacity 1, never closed).
	wake chan struct{}
	// readDone is closed when the read pump returns.
	readDone chan struct{}
}

func newClient(hub *Hub, conn *websocket.Conn, username, remote string) *Client {
	return &Client{
		hub:      hub,
		conn:     conn,
		settings: &hub.settings,
		username: username,
		remote:   remote,
		wake:     make(chan struct{}, 1),
		readDone: make(chan struct{}),
	}
}

// enqueue offers msg to the client without blocking; the caller adds what
// was enqueued to the hub's send-queue pressure. When the send queue is
// over its count or byte bound the queue is discarded and the client is
// closed with disconnectSlow; an empty queue always takes one message, so
// any message up to MAX_MESSAGE_BYTES can be delivered.
func (c *Client) enqueue(msg *message) enqueueResult {
	c.mu.Lock()
	if c.closing != nil {
		c.mu.Unlock()
		return enqueueClosing
	}
	if n := len(c.sendQueue); n > 0 && (n >= c.settings.sendQueueSize || c.queuedBytes+len(msg.data) > c.settings.sendQueueBytes) {
		c.closing = &disconnectSlow
		c.hub.stats.SlowDisconnects.Add(1)
		c.hub.queued(-n, -c.queuedBytes)
		clear(c.sendQueue)
		c.sendQueue = c.sendQueue[:0]
		c.queuedBytes = 0
		c.mu.Unlock()
		c.signal()
		return enqueueOverflow
	}
	c.sendQueue = append(c.sendQueue, msg)
	c.queuedBytes += len(msg.data)
	c.mu.Unlock()
	c.signal()
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
	c.mu.Unlock()
	c.signal()
}

// expire closes the connection because its token expired.
func (c *Client) expire() {
	c.mu.Lock()
	first := c.closing == nil
	if first {
		c.closing = &disconnectExpired
	}
	c.mu.Unlock()
	if first {
		c.hub.stats.ExpiredDisconnects.Add(1)
		c.signal()
	}
}

func (c *Client) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// takeWork swaps out the send queue, the pending pong and the close reason
// for the write pump. done is the batch the pump has finished writing.
func (c *Client) takeWork(done []*message) (batch []*message, pong *string, closing *disconnect) {
	clear(done)
	c.mu.Lock()
	batch = c.sendQueue
	c.sendQueue = done[:0]
	if len(batch) > 0 {
		c.hub.queued(-len(batch), -c.queuedBytes)
	}
	c.queuedBytes = 0
	pong, c.pendingPong = c.pendingPong, nil
	closing = c.closing
	c.mu.Unlock()
	return batch, pong, closing
}

// writePump writes queued messages, pongs and pings to the socket. It is the
// only goroutine that writes to or closes the socket, and it ends when the
// connection is closed for any reason.
func (c *Client) writePump() {
	defer c.hub.wg.Done()
	ping := time.NewTicker(c.settings.pingInterval)
	defer ping.Stop()
	defer c.conn.Close()
	defer c.cleanup()

	var batch []*message
	for {
		select {
		case <-c.wake:
		case <-ping.C:
			if err := c.write(websocket.PingMessage, nil); err != nil {
				c.close(disconnectGone)
				return
			}
			continue
		}

		var pong *string
		var closing *disconnect
		batch, pong, closing = c.takeWork(batch)
		if pong != nil {
			if err := c.write(websocket.PongMessage, []byte(*pong)); err != nil {
				c.close(disconnectGone)
				return
			}
		}
		for i, msg := range batch {
			if err := c.write(websocket.TextMessage, msg.data); err != nil {
				// The frames before this one were written: count them.
				c.hub.stats.FramesDelivered.Add(uint64(i))
				c.close(disconnectGone)
				return
			}
			c.hub.deliveryLatency.Observe(time.Since(msg.received).Seconds())
		}
		c.hub.stats.FramesDelivered.Add(uint64(len(batch)))
		if closing != nil {
			c.finish(*closing)
			return
		}
	}
}

// write sends one frame with the write deadline.
func (c *Client) write(messageType int, data []byte) error {
	if err := c.conn.SetWriteDeadline(time.Now().Add(c.settings.writeWait)); err != nil {
		return err
	}
	return c.conn.WriteMessage(messageType, data)
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
	timer := time.NewTimer(closeGrace)
	defer timer.Stop()
	select {
	case <-c.readDone:
	case <-timer.C:
	}
}

// readPump reads the client's frames so that pings, pongs and close frames
// are processed, enforces the read limits, and unregisters the client when
// the connection ends.
func (c *Client) readPump() {
	defer c.hub.wg.Done()
	defer func() {
		close(c.readDone)
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
		// Answered by the write pump, the socket's only writer.
		extend()
		c.mu.Lock()
		c.pendingPong = &appData
		c.mu.Unlock()
		c.signal()
		return nil
	})

	limiter := rate.NewLimiter(clientMessageRate, clientMessageBurst)
	for {
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
		if !limiter.Allow() {
			c.hub.stats.FloodDisconnects.Add(1)
			c.close(disconnectFlood)
			c.drainFrames()
			return
		}
	}
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
