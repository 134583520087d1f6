package main

import (
	"encoding/json"
	"errors"
	"io"
	"slices"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/time/rate"

	"fanout/internal/wsconn"
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

// wsClient is a Client over a WebSocket. Its read pump runs for the life
// of the connection; a write pump runs only while there is something to
// write (queued messages, a pong, a ping, a close) and returns when the
// queue is empty, and its read side parks while the client sends nothing
// (readFrames), so an idle connection holds no goroutine, no write buffer
// and no ticker.
type wsClient struct {
	Client
	conn *wsconn.Conn
	// v1 is set when the client chose the fanout.v1 subprotocol: events
	// go out as {"id":…,"data":…}, and control messages reach it.
	v1 bool
	// unflushed is a message writeNow handed to the socket only in part;
	// owned by the holder of the write right (not guarded by mu): the write
	// pump it hands over to finishes the write and counts it.
	unflushed *message
	// limiter bounds the data frames the client sends; owned by the read
	// side, made on the first data frame.
	limiter *rate.Limiter
}

// newWSClient makes the client of an upgraded connection. The caller, the
// upgrade handler, holds its write right (writeDirect) until it hands it
// off once the 101 is out.
func newWSClient(hub *Hub, conn *wsconn.Conn, username, remote string) *wsClient {
	c := &wsClient{Client: newClient(hub, username, remote), conn: conn, v1: conn.Subprotocol() == subprotocolV1}
	c.t = c
	c.writer = writeDirect
	return c
}

func (c *wsClient) startWriter()             { go c.writePump() }
func (c *wsClient) claimable() bool          { return c.conn.CanWriteNow() }
func (c *wsClient) controls() bool           { return c.v1 }
func (c *wsClient) pingEvery() time.Duration { return c.settings.pingInterval }

// abort closes the socket, which unblocks a write pump stuck on a client
// that does not read; Close may be called concurrently with the pumps.
func (c *wsClient) abort() { _ = c.conn.Close() }

// writeNow writes msg, claimed by enqueue (the caller holds the write
// right, writeDirect), on the caller's goroutine (the subscriber's or a
// fan-out goroutine of broadcast) without ever waiting for the socket: a
// connection whose socket takes the frame at once needs no goroutine at
// all, and nothing is woken. Whatever the socket does not take at once, and
// any work that arrived meanwhile, goes to a write pump (handOff).
func (c *wsClient) writeNow(msg *message) {
	if c.eventsStopped.Load() {
		// The queue overflowed, or the client closed, after msg was
		// claimed: no more frames, the pump sends the close.
		c.hub.stats.FramesDropped.Add(1)
		c.handOff(c.unflushed != nil)
		return
	}
	if !c.conn.TryCork() {
		// gorilla is answering the client from the read pump (a protocol
		// error) and may be waiting for the socket: the message goes to a
		// write pump rather than wait here, ahead of what was queued since
		// it was claimed. Counted in the pressure before it is queued, so
		// that the pump never takes off more than was added.
		c.hub.addQueued(1, len(msg.data))
		c.mu.Lock()
		c.sendQueue = slices.Insert(c.sendQueue, 0, msg)
		c.queuedBytes += len(msg.data)
		c.mu.Unlock()
		c.handOff(c.unflushed != nil)
		return
	}
	if err := c.writeFrame(msg); err != nil {
		// gorilla refuses frames once it has sent a close frame from the
		// read pump, possibly into this batch: the pump flushes what was
		// collected, then ends the connection.
		c.disconnect(disconnectGone)
	} else if done, err := c.conn.TryFlush(); err != nil {
		c.disconnect(disconnectGone)
	} else if !done {
		c.unflushed = msg
	} else {
		c.hub.deliveryLatency.Observe(time.Since(msg.received).Seconds())
		c.hub.stats.FramesDelivered.Add(1)
	}
	c.handOff(c.unflushed != nil)
}

// writeFrame writes msg as one text frame: its prepared frame when it has
// one.
func (c *wsClient) writeFrame(msg *message) error {
	prepared := msg.prepared
	if c.v1 {
		prepared = msg.preparedV1
	}
	if prepared != nil {
		return c.conn.WritePreparedMessage(prepared)
	}
	return c.conn.WriteMessage(websocket.TextMessage, c.frameData(msg))
}

// frameSize is the bytes on the wire of msg's frame for this client.
func (c *wsClient) frameSize(msg *message) int { return wsconn.FrameSize(len(c.frameData(msg))) }

// frameData is what msg's frame carries for this client: the published
// bytes, or for a fanout.v1 client the {"id","data"} object.
func (c *wsClient) frameData(msg *message) []byte {
	if c.v1 && msg.v1 != nil {
		return msg.v1
	}
	return msg.data
}

// writePump writes queued messages, pongs and pings to the socket, each
// batch with one write, and returns when there is nothing left to do (the
// write right goes back to idle) or the connection ends (closeSocket). It
// runs only while it holds the write right.
func (c *wsClient) writePump() {
	if c.conn.Buffered() > 0 {
		// Left by writeNow: the rest of its frame, or what was collected
		// before gorilla refused to write more.
		msg := c.unflushed
		c.unflushed = nil
		if _, err := c.conn.Flush(time.Now().Add(c.settings.writeWait)); err != nil {
			c.disconnect(disconnectGone)
			c.closeSocket()
			return
		}
		if msg != nil {
			c.delivered([]*message{msg})
		}
	}
	var batch []*message
	for {
		w, idle := c.takeWork(batch)
		if idle {
			return
		}
		batch = w.batch
		// After errEventsStopped the close frame is still sent: in this
		// round, or in the next one, which takes the close reason.
		if err := c.writeBatch(w); err != nil && err != errEventsStopped {
			c.disconnect(disconnectGone)
			c.closeSocket()
			return
		}
		if w.closing != nil {
			c.sendCloseFrame(*w.closing)
			c.closeSocket()
			return
		}
	}
}

// errEventsStopped stops a batch whose client's send queue overflowed, or
// whose client closed, while it was written: nothing more is flushed, and
// the close frame follows.
var errEventsStopped = errors.New("no more events for this connection")

// writeBatch writes w's pong, ping and messages, corked, flushing every
// wsconn.FlushBytes, and counts the frames that reached the socket. When
// gorilla refuses a frame (it has sent a close frame from the read pump,
// into this batch), what was collected is still flushed, that close frame
// with it. Once events are stopped (eventsStopped) nothing more is flushed,
// and it returns errEventsStopped.
func (c *wsClient) writeBatch(w work) error {
	c.conn.Cork()
	deadline := time.Now().Add(c.settings.writeWait)
	// gorilla checks its own deadline setting on every write; while corked
	// the socket ignores it and Flush applies it.
	_ = c.conn.SetWriteDeadline(deadline)
	// w.batch[from:] are the messages since the last flush; control is the
	// bytes of control frames ahead of them in the buffer.
	from, control := 0, 0
	flush := func(upTo int) error {
		if c.eventsStopped.Load() {
			c.conn.Discard()
			return errEventsStopped
		}
		n, err := c.conn.Flush(deadline)
		c.deliveredUpTo(w.batch[from:upTo], n-control, err, c.frameSize)
		from, control = upTo, 0
		return err
	}
	var err error
	if w.pong != nil {
		err = c.conn.WriteMessage(websocket.PongMessage, []byte(*w.pong))
	}
	if err == nil && w.ping {
		err = c.conn.WriteMessage(websocket.PingMessage, nil)
	}
	if err != nil {
		_ = flush(0)
		return err
	}
	control = c.conn.Buffered()
	for i, msg := range w.batch {
		if err := c.writeFrame(msg); err != nil {
			_ = flush(i)
			return err
		}
		last := i == len(w.batch)-1
		if !last && c.conn.Buffered() < wsconn.FlushBytes {
			continue
		}
		if err := flush(i + 1); err != nil {
			return err
		}
		if !last {
			c.conn.Cork()
		}
	}
	if len(w.batch) == 0 {
		return flush(0)
	}
	return nil
}

// sendCloseFrame sends the close frame for d, if it has one, and waits
// briefly for the client to answer it, so that closeSocket does not cut
// off the client's reading.
func (c *wsClient) sendCloseFrame(d disconnect) {
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

// closeSocket ends the connection, by the write pump that holds the write
// right: it closes the socket, gives back the batch buffer and ends the
// write side (closeWriteSide). No pump starts after it.
func (c *wsClient) closeSocket() {
	_ = c.conn.Close()
	c.conn.Discard()
	c.closeWriteSide()
}

// readPump starts the read side: it sets the read limits and the
// handlers, then reads (readFrames). The read side reads the client's
// frames so that pings, pongs and close frames are processed, enforces the
// read limits, and unregisters the client when the connection ends.
func (c *wsClient) readPump() {
	c.conn.SetReadLimit(maxClientMessageSize)
	c.extendRead()
	// For the control frames gorilla reads itself (between the fragments
	// of a message, or while draining).
	c.conn.SetPongHandler(c.pongRead)
	c.conn.SetPingHandler(c.pingRead)
	c.conn.SetCloseHandler(c.peerClosed)
	c.conn.SetResume(c.readFrames)
	if c.conn.Park() {
		return
	}
	c.readFrames()
}

// readFrames reads the client's frames until none is left, then parks the
// read side (wsconn's Park: an idle connection holds no goroutine) and
// returns; the parking lot calls it again, on a new goroutine, when the
// socket has more. Once the connection ends it ends the read side (leave).
// It reads pings and pongs itself, on a shallow stack (wsconn's NextControl);
// gorilla reads only data frames, close frames and anything malformed.
func (c *wsClient) readFrames() {
	for {
		if !c.readFrame() {
			c.leave()
			return
		}
		if c.conn.Park() {
			return
		}
	}
}

// readFrame reads the client's next frame (a whole message for a data
// frame), waiting for it if need be, and reports whether the connection
// goes on.
func (c *wsClient) readFrame() bool {
	if err := c.conn.AwaitReadable(); err != nil {
		return false // the pong wait expired, or the socket was closed
	}
	op, payload, err := c.conn.NextControl()
	if err != nil {
		return false
	}
	switch op {
	case websocket.PongMessage:
		c.extendRead()
		return true
	case websocket.PingMessage:
		c.extendRead()
		c.answerPing(string(payload))
		return true
	}
	_, r, err := c.conn.NextReader()
	var data []byte
	if err == nil {
		// Reading the whole message enforces the read limit on every
		// fragment of it. A fanout.v1 client's message may be an ack.
		if c.v1 {
			data, err = io.ReadAll(r)
		} else {
			_, err = io.Copy(io.Discard, r)
		}
	}
	if err != nil {
		if websocket.IsUnexpectedCloseError(err, websocket.CloseGoingAway, websocket.CloseNormalClosure, websocket.CloseNoStatusReceived) {
			c.hub.logger.Debug("Read failed", "username", c.username, "remote", c.remote, "err", err)
		}
		if errors.Is(err, websocket.ErrReadLimit) {
			// gorilla has sent the 1009 close frame.
			c.drainSocket()
		}
		return false
	}
	c.extendRead()
	if c.limiter == nil {
		// Most clients never send a data frame: made on the first one.
		c.limiter = rate.NewLimiter(clientMessageRate, clientMessageBurst)
	}
	if !c.limiter.Allow() {
		c.disconnect(disconnectFlood)
		c.drainFrames()
		return false
	}
	if data != nil {
		c.takeAck(data)
	}
	return true
}

// takeAck records a fanout.v1 client's {"ack":"<event id>"} (read
// receipts); any other message is ignored, as from every client.
func (c *wsClient) takeAck(data []byte) {
	var m struct {
		Ack *string `json:"ack"`
	}
	if json.Unmarshal(data, &m) == nil && m.Ack != nil {
		_ = c.hub.receipts.ack(c.username, *m.Ack)
	}
}

// extendRead gives the client another pong wait to send something.
func (c *wsClient) extendRead() {
	_ = c.conn.SetReadDeadline(time.Now().Add(c.settings.pongWait))
}

// pongRead is the pong handler for the pongs gorilla reads itself.
func (c *wsClient) pongRead(string) error {
	c.extendRead()
	return nil
}

// pingRead is the ping handler for the pings gorilla reads itself: the
// holder of the write right answers it.
func (c *wsClient) pingRead(appData string) error {
	c.extendRead()
	c.answerPing(appData)
	return nil
}

// drainFrames reads and discards the client's frames until its answer to
// our close frame, or for at most closeGrace. Closing a socket with unread
// data resets the connection, and a browser then reports 1006 instead of
// the close code it was sent.
func (c *wsClient) drainFrames() {
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
func (c *wsClient) drainSocket() {
	nc := c.conn.NetConn()
	_ = nc.SetReadDeadline(time.Now().Add(closeGrace))
	_, _ = io.Copy(io.Discard, nc)
}

// peerClosed is gorilla's close handler, called by the read pump when the
// client sends a close frame. Rather than gorilla writing the answer from
// the read pump (into a batch being collected, where it was lost), the
// holder of the write right sends it: the client's own code back (RFC 6455,
// 5.5.1), at once: what was still queued is dropped, and a batch being
// written stops at its next flush. The client reads no more events.
func (c *wsClient) peerClosed(code int, _ string) error {
	c.end(disconnect{code: code}, true)
	return nil
}
