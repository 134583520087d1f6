package main

import (
	"context"
	"errors"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/time/rate"

	"fanout/history"
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

// clientSettings are the per-connection limits and timings, shared by all
// clients of a hub.
type clientSettings struct {
	sendQueueSize  int
	sendQueueBytes int
	pingInterval   time.Duration
	pongWait       time.Duration
	writeWait      time.Duration
}

// The right to write a connection's socket
//
// At any moment one goroutine at most writes a client's socket through
// gorilla (frames, flushes, the close frame): the holder of the write
// right. Client.writer names the holder; c.mu guards it.
//
//	writeIdle     nobody; the next piece of work takes the right
//	writeDirect   the goroutine that claimed an idle client in broadcast
//	              (enqueue with claim) and runs writeNow: the subscriber's,
//	              or one of broadcast's fan-out goroutines
//	writePumping  a write pump goroutine (writePump)
//	writeEnded    the socket is closed: nobody writes again
//
// The moves, and the one function that makes each:
//
//	idle → direct      enqueue, claiming an idle client with nothing queued
//	idle → pumping     takeRightLocked, by whoever queues work (a message,
//	                   a ping, a pong, a close); startPump starts the pump
//	direct → pumping   handOff, when writeNow leaves work behind
//	direct → idle      handOff, when it leaves none
//	pumping → idle     takeWork, when there is nothing left to take
//	pumping → ended    closeSocket, by the pump that ends the connection
//
// What the holder owns, and nobody else touches: the cork and the batch
// buffer of the socket (wsconn.Conn's Cork, Flush, TryFlush, Discard) and
// unflushed. A hand-off to a new pump passes them with the go statement,
// which orders the pump after everything its starter did.
//
// Two writes happen outside the right, and the code allows for both:
// gorilla writes a close frame from the read pump for a protocol error or an
// over-limit message (wsconn's point 5), under the socket's own lock, so
// frames never interleave and writeNow's TryCork never waits for it; and
// shutdown closes the sockets of pumps stuck on clients that do not read
// (closing a socket is safe while another goroutine writes to it). A client's
// close frame is not answered by gorilla: peerClosed queues the answer for
// the holder of the right.
type writeRight uint8

const (
	writeIdle writeRight = iota
	writeDirect
	writePumping
	writeEnded
)

// enqueueResult says what happened to a message offered to a client.
type enqueueResult int

const (
	enqueued enqueueResult = iota
	// enqueueClaimed: not queued; the caller took the write right
	// (writeDirect) and writes msg itself with writeNow.
	enqueueClaimed
	// enqueueOverflow: the queue was full; the client is being disconnected.
	enqueueOverflow
	// enqueueClosing: the client was already being disconnected.
	enqueueClosing
	// enqueueHeld: the client is catching up on its history; msg waits in
	// its held list until the catch-up is done (finishReplay), or was
	// sent by the catch-up already.
	enqueueHeld
)

// Client is one WebSocket connection of one user. Its read pump runs for
// the life of the connection; a write pump runs only while there is
// something to write (queued messages, a pong, a ping, a close) and returns
// when the queue is empty, so an idle connection holds one goroutine, no
// write buffer and no ticker. Who may write the socket is the write right
// (writeRight, above). The hub owns both sides through its WaitGroup: one
// count for the read pump, one for the write side, released by closeSocket.
type Client struct {
	hub      *Hub
	conn     *wsconn.Conn
	settings *clientSettings
	// username is the user whose events this connection receives.
	username string
	// v1 is set when the client chose the fanout.v1 subprotocol: events
	// go out as {"id":…,"data":…}, and control messages reach it.
	v1 bool
	// sse, for a /events connection, is its HTTP response; conn is nil.
	sse *sseStream
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
	// eventsStopped is set with closing when no more events are to be
	// written: the send queue overflowed, or the client sent its close
	// frame. From then on no event frame is handed to the socket (writeNow
	// and each flush of a batch look at it), only the close frame.
	eventsStopped atomic.Bool

	// mu guards everything below.
	mu sync.Mutex
	// sendQueue holds messages no writer has taken yet; the byte slices
	// are shared by every client of the user and never changed.
	sendQueue   []*message
	queuedBytes int
	// pendingPong is the payload of a client ping still to be answered.
	pendingPong *string
	// pingDue is set when a ping is to be sent.
	pingDue bool
	// closing is set once, when the connection is to end, to why.
	closing *disconnect
	// writer is who holds the write right.
	writer writeRight
	// readEnded is set when the read pump returns; readDone, made only
	// when sendCloseFrame waits for that, is closed then.
	readEnded bool
	readDone  chan struct{}

	// lastID is the id of the last event handed to the writer: where a
	// catch-up after a lost subscription starts (Hub.resync).
	lastID string

	// catchUp is the connection's catch-up on its history, while it runs
	// and until the first live event after it; nil otherwise (most of a
	// connection's life, so an idle connection does not carry it).
	catchUp *catchUp

	// unflushed is a message writeNow handed to the socket only in part;
	// owned by the holder of the write right (not guarded by mu): the write
	// pump it hands over to finishes the write and counts it.
	unflushed *message
}

// catchUp is the state of a connection catching up on its history,
// guarded by its client's mu.
type catchUp struct {
	// done is set by finishReplay: live events flow again.
	done bool
	// Until done, live events wait in held, in order; heldOverflow is set
	// when more than a send queue's worth arrived (they were dropped, and
	// are read from the history instead).
	held         []*message
	heldOverflow bool
	// drained, made by a catch-up that waits for the send queue to be
	// taken, is closed by takeWork (or when the queue is dropped).
	drained chan struct{}
	// replayedTo, once done, is the last event the catch-up sent: a live
	// event that is not after it was sent already (its entry was read
	// from the history before the recorder broadcast it) and is skipped.
	replayedTo history.ID
}

// sent reports whether msg is an event the finished catch-up sent already.
func (cu *catchUp) sent(msg *message) bool {
	id, ok := history.ParseID(msg.id)
	return ok && !cu.replayedTo.Less(id)
}

// newClient makes the client of an upgraded connection; conn is nil for a
// client without one (hub tests), which never starts a write pump.
func newClient(hub *Hub, conn *wsconn.Conn, username, remote string) *Client {
	return &Client{hub: hub, conn: conn, settings: &hub.settings, username: username, remote: remote}
}

// enqueue offers msg to the client without blocking; broadcast accounts for
// the send-queue pressure. When the send queue is over its count or byte
// bound the queue is discarded and the client is closed with
// disconnectSlow; an empty queue always takes one message, so any message
// up to MAX_MESSAGE_BYTES can be delivered.
//
// With claim set, an idle client (nothing queued, nobody holding the write
// right) is not given a pump: enqueue returns enqueueClaimed, and the
// caller, now holding the write right, writes msg with writeNow.
func (c *Client) enqueue(msg *message, claim bool) enqueueResult {
	c.mu.Lock()
	if c.closing != nil {
		c.mu.Unlock()
		return enqueueClosing
	}
	if cu := c.catchUp; cu != nil {
		switch {
		case !cu.done:
			if len(cu.held) >= c.settings.sendQueueSize {
				cu.heldOverflow = true
				clear(cu.held)
				cu.held = cu.held[:0]
			} else {
				cu.held = append(cu.held, msg)
			}
			c.mu.Unlock()
			return enqueueHeld
		case cu.sent(msg):
			c.mu.Unlock()
			return enqueueHeld // sent from the history already
		case msg.id != "":
			c.catchUp = nil // the first live event after the catch-up
		}
	}
	if msg.id != "" {
		c.lastID = msg.id
	}
	if claim && c.writer == writeIdle && !c.hasWorkLocked() && c.conn != nil && c.conn.CanWriteNow() {
		c.writer = writeDirect
		c.mu.Unlock()
		return enqueueClaimed
	}
	if n := len(c.sendQueue); n > 0 && (n >= c.settings.sendQueueSize || c.queuedBytes+len(msg.data) > c.settings.sendQueueBytes) {
		c.setClosingLocked(disconnectSlow, true)
		start := c.takeRightLocked()
		c.mu.Unlock()
		c.startPump(start)
		return enqueueOverflow
	}
	c.sendQueue = append(c.sendQueue, msg)
	c.queuedBytes += len(msg.data)
	start := c.takeRightLocked()
	c.mu.Unlock()
	c.startPump(start)
	return enqueued
}

// enqueueReplay queues msgs, read from the history by a catch-up, for the
// writer; the catch-up paces itself (waitTaken), so the send queue's bounds
// do not apply. It reports false when the connection is ending.
func (c *Client) enqueueReplay(msgs []*message) bool {
	c.mu.Lock()
	if c.closing != nil {
		c.mu.Unlock()
		return false
	}
	bytes := 0
	for _, m := range msgs {
		bytes += len(m.data)
		if m.id != "" {
			c.lastID = m.id
		}
	}
	c.sendQueue = append(c.sendQueue, msgs...)
	c.queuedBytes += bytes
	c.hub.addQueued(len(msgs), bytes)
	start := c.takeRightLocked()
	c.mu.Unlock()
	c.startPump(start)
	return true
}

// waitTaken waits until the writer has taken everything queued, and
// reports false when the connection ended or ctx did first.
func (c *Client) waitTaken(ctx context.Context) bool {
	c.mu.Lock()
	if c.closing != nil {
		c.mu.Unlock()
		return false
	}
	if len(c.sendQueue) == 0 || c.catchUp == nil {
		c.mu.Unlock()
		return true
	}
	if c.catchUp.drained == nil {
		c.catchUp.drained = make(chan struct{})
	}
	done := c.catchUp.drained
	c.mu.Unlock()
	select {
	case <-done:
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.closing == nil
	case <-ctx.Done():
		return false
	}
}

// finishReplay ends a catch-up that has sent the history up to cursor:
// the live events held meanwhile are queued, less those the history
// already gave, and live events flow from now on. When more were held than
// a send queue holds (they were dropped), it reports more: the catch-up
// reads them from the history and calls it again.
func (c *Client) finishReplay(cursor string) (more bool) {
	last, hasLast := history.ParseID(cursor)
	c.mu.Lock()
	cu := c.catchUp
	if c.closing != nil || cu == nil {
		c.catchUp = nil
		c.mu.Unlock()
		return false
	}
	if cu.heldOverflow {
		cu.heldOverflow = false
		c.mu.Unlock()
		return true
	}
	cu.done, cu.replayedTo = true, last
	n, bytes := 0, 0
	for _, m := range cu.held {
		if hasLast && cu.sent(m) {
			continue
		}
		c.sendQueue = append(c.sendQueue, m)
		n++
		bytes += len(m.data)
		if m.id != "" {
			c.lastID = m.id
		}
	}
	cu.held = nil
	if !hasLast {
		c.catchUp = nil // nothing was sent that could come again
	}
	c.queuedBytes += bytes
	c.hub.addQueued(n, bytes)
	start := n > 0 && c.takeRightLocked()
	c.mu.Unlock()
	c.startPump(start)
	return false
}

// takenLocked tells a catch-up waiting in waitTaken that the send queue
// was taken or dropped; c.mu must be held.
func (c *Client) takenLocked() {
	if c.catchUp != nil && c.catchUp.drained != nil {
		close(c.catchUp.drained)
		c.catchUp.drained = nil
	}
}

// dropQueueLocked empties the send queue and takes it off the hub's
// send-queue pressure; c.mu must be held.
func (c *Client) dropQueueLocked() {
	if n := len(c.sendQueue); n > 0 {
		c.hub.addQueued(-n, -c.queuedBytes)
	}
	clear(c.sendQueue)
	c.takenLocked()
	if cap(c.sendQueue) > maxKeptQueue {
		c.sendQueue = nil
	} else {
		c.sendQueue = c.sendQueue[:0]
	}
	c.queuedBytes = 0
}

// disconnect asks the holder of the write right to end the connection for
// reason d. Messages already queued are still written first, unless the
// queue overflowed. Only the first reason counts.
func (c *Client) disconnect(d disconnect) { c.end(d, false) }

// tokenExpired ends the connection because its token expired; the expiry
// timer calls it.
func (c *Client) tokenExpired() { c.disconnect(disconnectExpired) }

// peerClosed is gorilla's close handler, called by the read pump when the
// client sends a close frame. Rather than gorilla writing the answer from
// the read pump (into a batch being collected, where it was lost), the
// holder of the write right sends it: the client's own code back (RFC 6455,
// 5.5.1), at once: what was still queued is dropped, and a batch being
// written stops at its next flush. The client reads no more events.
func (c *Client) peerClosed(code int, _ string) error {
	c.end(disconnect{code: code}, true)
	return nil
}

// end records d as why the connection ends (setClosingLocked) and hands the
// close to the holder of the write right, or to a new write pump.
func (c *Client) end(d disconnect, stopEvents bool) {
	c.mu.Lock()
	c.setClosingLocked(d, stopEvents)
	start := c.takeRightLocked()
	c.mu.Unlock()
	c.startPump(start)
}

// setClosingLocked records d as why the connection ends when it is the
// first reason, and counts it in its disconnect counter, if it has one.
// With stopEvents, what is queued is dropped and no more events are
// written (eventsStopped), only the close frame. c.mu must be held.
func (c *Client) setClosingLocked(d disconnect, stopEvents bool) {
	if c.closing != nil {
		return
	}
	c.closing = &d
	if d.counter != nil {
		d.counter.field(c.hub.stats).Add(1)
	}
	if stopEvents {
		c.eventsStopped.Store(true)
		c.dropQueueLocked()
	}
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
	start := c.takeRightLocked()
	c.mu.Unlock()
	c.startPump(start)
}

// answerPing queues the pong for a client's ping, for the holder of the
// write right.
func (c *Client) answerPing(appData string) {
	c.mu.Lock()
	c.pendingPong = &appData
	start := c.takeRightLocked()
	c.mu.Unlock()
	c.startPump(start)
}

// takeRightLocked moves the write right from idle to a new write pump; the
// caller starts it (startPump) after releasing c.mu. It reports false when
// somebody holds the right already (the work just queued is theirs to do)
// or the client has no socket.
func (c *Client) takeRightLocked() bool {
	if c.writer != writeIdle || c.conn == nil && c.sse == nil {
		return false
	}
	c.writer = writePumping
	return true
}

// startPump starts the write pump that was given the write right. It is
// the one place a pump starts. An SSE connection's pump is its request's
// goroutine, which is woken instead.
func (c *Client) startPump(start bool) {
	if !start {
		return
	}
	if c.sse != nil {
		c.sse.wake()
		return
	}
	go c.writePump()
}

// handOff ends writeNow's hold on the write right: a write pump takes it
// over when work is left (the rest of a frame the socket did not take, a
// batch to flush, or work queued meanwhile), and otherwise it goes back to
// idle.
func (c *Client) handOff() {
	c.mu.Lock()
	pump := c.unflushed != nil || c.hasWorkLocked()
	if pump {
		c.writer = writePumping
	} else {
		c.writer = writeIdle
	}
	c.mu.Unlock()
	c.startPump(pump)
}

// takeWork swaps out the send queue, the pending pong, a due ping and the
// close reason for the write pump. done is the batch the pump has finished
// writing. When there is nothing to do it gives the write right back
// (idle is true) and the pump must return: the next piece of work starts
// a new one.
func (c *Client) takeWork(done []*message) (w work, idle bool) {
	clear(done)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.hasWorkLocked() {
		c.writer = writeIdle
		if cap(done) <= maxKeptQueue && cap(c.sendQueue) == 0 {
			// Keep one slice for the next message, but not a long one.
			c.sendQueue = done[:0]
		}
		return work{}, true
	}
	w.batch = c.sendQueue
	c.sendQueue = nil
	c.takenLocked()
	if cap(done) <= maxKeptQueue {
		c.sendQueue = done[:0]
	}
	if len(w.batch) > 0 {
		c.hub.addQueued(-len(w.batch), -c.queuedBytes)
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

// writeNow writes msg, claimed by enqueue (the caller holds the write
// right, writeDirect), on the caller's goroutine (the subscriber's or a
// fan-out goroutine of broadcast) without ever waiting for the socket: a
// connection whose socket takes the frame at once needs no goroutine at
// all, and nothing is woken. Whatever the socket does not take at once, and
// any work that arrived meanwhile, goes to a write pump (handOff).
func (c *Client) writeNow(msg *message) {
	if c.eventsStopped.Load() {
		// The queue overflowed, or the client closed, after msg was
		// claimed: no more frames, the pump sends the close.
		c.hub.stats.FramesDropped.Add(1)
		c.handOff()
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
		c.handOff()
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
	c.handOff()
}

// writeFrame writes msg as one text frame: its prepared frame when it has
// one.
func (c *Client) writeFrame(msg *message) error {
	prepared := msg.prepared
	if c.v1 {
		prepared = msg.preparedV1
	}
	if prepared != nil {
		return c.conn.WritePreparedMessage(prepared)
	}
	return c.conn.WriteMessage(websocket.TextMessage, c.frameData(msg))
}

// frameData is what msg's frame carries for this client: the published
// bytes, or for a fanout.v1 client the {"id","data"} object.
func (c *Client) frameData(msg *message) []byte {
	if c.v1 && msg.v1 != nil {
		return msg.v1
	}
	return msg.data
}

// writePump writes queued messages, pongs and pings to the socket, each
// batch with one write, and returns when there is nothing left to do (the
// write right goes back to idle) or the connection ends (closeSocket). It
// runs only while it holds the write right.
func (c *Client) writePump() {
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
			c.delivered([]*message{msg}, 0, nil)
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
func (c *Client) writeBatch(w work) error {
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
		c.delivered(w.batch[from:upTo], n-control, err)
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

// delivered counts the messages of chunk that fit in the n bytes written
// and observes their latency; with err == nil all of them did.
func (c *Client) delivered(chunk []*message, n int, err error) {
	if err != nil {
		k := 0
		for ; k < len(chunk); k++ {
			size := wsconn.FrameSize(len(c.frameData(chunk[k])))
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

// sendCloseFrame sends the close frame for d, if it has one, and waits
// briefly for the client to answer it, so that closeSocket does not cut
// off the client's reading.
func (c *Client) sendCloseFrame(d disconnect) {
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
// right: it closes the socket, gives back the batch buffer, takes what is
// left in the send queue off the hub's pressure, logs a connection the
// daemon itself ended (the ordinary ends are logged by the read pump as
// "Client unregistered"), and releases the write side's count in the hub.
// The write right ends here: no pump starts after it.
func (c *Client) closeSocket() {
	_ = c.conn.Close()
	c.conn.Discard()
	c.mu.Lock()
	c.writer = writeEnded
	d := c.closing
	c.dropQueueLocked()
	c.mu.Unlock()
	switch {
	case d == nil:
	case *d == disconnectSlow, *d == disconnectFlood:
		c.hub.logger.Warn("Closing client", "username", c.username, "remote", c.remote, "code", d.code, "reason", d.reason)
	case *d == disconnectExpired:
		c.hub.logger.Info("Closing client", "username", c.username, "remote", c.remote, "code", d.code, "reason", d.reason)
	}
	c.hub.wg.Done()
}

// readPump reads the client's frames so that pings, pongs and close frames
// are processed, enforces the read limits, and unregisters the client when
// the connection ends. It waits for the socket, and reads pings and pongs,
// on a shallow stack of its own (wsconn's AwaitReadable and NextControl);
// gorilla reads only data frames, close frames and anything malformed.
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
		c.disconnect(disconnectGone)
		remaining := c.hub.unregister(c)
		c.hub.logger.Info("Client unregistered", "username", c.username, "remaining_for_user", remaining)
	}()

	c.conn.SetReadLimit(maxClientMessageSize)
	extend := func() { _ = c.conn.SetReadDeadline(time.Now().Add(c.settings.pongWait)) }
	extend()
	// For the control frames gorilla reads itself (between the fragments
	// of a message, or while draining).
	c.conn.SetPongHandler(func(string) error { extend(); return nil })
	c.conn.SetPingHandler(func(appData string) error {
		extend()
		c.answerPing(appData)
		return nil
	})
	c.conn.SetCloseHandler(c.peerClosed)

	var limiter *rate.Limiter
	for {
		if err := c.conn.AwaitReadable(); err != nil {
			return // the pong wait expired, or the socket was closed
		}
		op, payload, err := c.conn.NextControl()
		if err != nil {
			return
		}
		switch op {
		case websocket.PongMessage:
			extend()
			continue
		case websocket.PingMessage:
			extend()
			c.answerPing(string(payload))
			continue
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
			c.disconnect(disconnectFlood)
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
