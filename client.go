package main

import (
	"sync"
	"sync/atomic"
	"time"
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

// transport is how a client's frames reach its peer: a WebSocket
// (wsClient, websocket.go) or an SSE stream (sseClient, sse.go). The
// queue, the write right and the end of a connection are the Client's;
// the transport writes and reads.
type transport interface {
	// startWriter runs the write side for the goroutine that was just
	// given the write right (takeRightLocked): a new write pump.
	startWriter()
	// claimable reports whether a broadcast may take the write right of
	// an idle client and write its frame on its own goroutine (writeNow).
	claimable() bool
	// writeNow writes msg for a broadcast that claimed the client
	// (enqueueClaimed), without waiting for the socket; only called when
	// claimable reported true.
	writeNow(msg *message)
	// abort makes a write stuck on a peer that does not read fail at once
	// and ends the connection: shutdown gives up on it.
	abort()
	// controls reports whether control messages (a resync) reach the
	// client: fanout.v1 WebSockets and SSE streams.
	controls() bool
	// pingEvery is how often the hub's pinger asks for a ping (WebSocket)
	// or a heartbeat comment (SSE).
	pingEvery() time.Duration
}

// The right to write a connection's socket
//
// At any moment one goroutine at most writes a client's socket (frames,
// flushes, the close frame, SSE events, heartbeats and the last chunk): the holder of the
// write right. Client.writer names the holder; c.mu guards it.
//
//	writeIdle     nobody; the next piece of work takes the right
//	writeDirect   a goroutine writing without a pump: the upgrade handler,
//	              which holds the right from the client's creation until
//	              the 101 is out (server.go, upgradeAndRegister), or the
//	              goroutine that claimed an idle client in broadcast
//	              (enqueue with claim) and runs writeNow: the
//	              subscriber's, the recorder's (HISTORY on: it broadcasts
//	              once an event has its id) or one of broadcast's fan-out
//	              goroutines
//	writePumping  the write side: a WebSocket's write pump goroutine
//	              (writePump) or an SSE stream's (sseClient.writePump),
//	              started by startWriter
//	writeEnded    the connection is closed: nobody writes again
//
// The moves, and the one function that makes each:
//
//	new → direct       newWSClient, for the upgrade handler
//	new → direct       handleEvents, until the retry line is out and the
//	                   connection is taken over from net/http
//	idle → direct      enqueue, claiming an idle client with nothing queued
//	idle → pumping     takeRightLocked, by whoever queues work (a message,
//	                   a ping, a pong, a close); startPump starts the side
//	direct → pumping   handOff, when writeNow (or the upgrade) leaves work
//	direct → idle      handOff, when it leaves none
//	pumping → idle     takeWork, when there is nothing left to take
//	pumping → ended    closeWriteSide, by the side that ends the connection
//
// What the holder owns, and nobody else touches: the transport's write
// buffers (wsconn.Conn's and wsconn.Stream's Cork, Flush, TryFlush,
// Discard, and wsClient's and sseClient's unflushed). A hand-off to a new pump passes them with
// the go statement, which orders the pump after everything its starter did.
//
// Two writes happen outside the right, and the code allows for both:
// gorilla writes a close frame from a WebSocket's read pump for a protocol
// error or an over-limit message (wsconn's point 5), under the socket's own
// lock, so frames never interleave and writeNow's TryCork never waits for
// it; and shutdown aborts the connections whose side is stuck on a peer that
// does not read (transport.abort; closing a socket is safe while another
// goroutine writes to it). A client's close frame is not answered by
// gorilla: peerClosed queues the answer for the holder of the right.
//
// Lock order:
//
//	hubShard.mu → Client.mu
//	hubShard.mu → redisPresence.mu (presence.go: a leaf)
//	hubShard.mu → subscription's want/unwant → clusterSubscription.mu → userChannels.mu
//
// The hub calls into clients (enqueue, catchUpAfterLoss) and into the
// subscription (want, unwant) with a shard lock held; a Client never takes
// a shard lock while it holds its own mu, and the subscription never calls
// back into the hub while it holds its locks.
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
	// (writeDirect) and writes msg itself with transport.writeNow.
	enqueueClaimed
	// enqueueOverflow: the queue was full; the client is being disconnected.
	enqueueOverflow
	// enqueueClosing: the client was already being disconnected.
	enqueueClosing
	// enqueueHeld: the client is catching up on its history; msg waits in
	// its held list until the catch-up is done (finishCatchUp), or was
	// sent by the catch-up already.
	enqueueHeld
)

// Client is one connection of one user, over a WebSocket or an SSE
// stream (its transport). It holds what every connection has: the send
// queue, the write right (above), the catch-up state and why it ends. A
// write side runs only while there is something to write, so an idle
// connection holds no write buffer and no timer. The hub owns both of a
// connection's sides through its WaitGroup: one count for the read side
// (a WebSocket's read pump, an SSE stream's readSide), released by leave, one for the
// write side, released by closeWriteSide.
type Client struct {
	hub      *Hub
	t        transport
	settings *clientSettings
	// username is the user whose events this connection receives.
	username string
	// remote is the client address, for logs.
	remote string
	// expires is when the connection's token expires (zero: never).
	expires time.Time
	// expiry, when expires is set, closes the connection at that time with
	// disconnectExpired. The hub starts it; leave stops it.
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
	// pingDue is set when a ping (or SSE heartbeat) is to be sent.
	pingDue bool
	// closing is set once, when the connection is to end, to why.
	closing *disconnect
	// writer is who holds the write right.
	writer writeRight
	// readEnded is set when the read side ends (leave); readDone, made
	// only when a WebSocket's sendCloseFrame waits for that, is closed then.
	readEnded bool
	readDone  chan struct{}

	// lastID is the id of the last event handed to the writer: where a
	// catch-up after a lost subscription starts (Hub.catchUpAfterLoss).
	lastID string

	// catchUp is the connection's catch-up on its history, while it runs
	// and until the first live event after it; nil otherwise (most of a
	// connection's life, so an idle connection does not carry it).
	catchUp *catchUp
}

// enqueue offers msg to the client without blocking; broadcast accounts for
// the send-queue pressure. When the send queue is over its count or byte
// bound the queue is discarded and the client is closed with
// disconnectSlow; an empty queue always takes one message, so any message
// up to MAX_MESSAGE_BYTES can be delivered.
//
// With claim set, an idle client (nothing queued, nobody holding the write
// right) whose transport allows it is not given a pump: enqueue returns
// enqueueClaimed, and the caller, now holding the write right, writes msg
// with transport.writeNow.
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
	if claim && c.writer == writeIdle && !c.hasWorkLocked() && c.t.claimable() {
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

// end records d as why the connection ends (setClosingLocked) and hands the
// close to the holder of the write right, or to a new write side.
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

// requestPing asks for a ping (a heartbeat comment on SSE); the hub's
// pinger calls it once per transport.pingEvery.
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

// takeRightLocked moves the write right from idle to a new write side; the
// caller starts it (startPump) after releasing c.mu. It reports false when
// somebody holds the right already (the work just queued is theirs to do).
func (c *Client) takeRightLocked() bool {
	if c.writer != writeIdle {
		return false
	}
	c.writer = writePumping
	return true
}

// startPump starts the write side that was given the write right. It is
// the one place a write side starts.
func (c *Client) startPump(start bool) {
	if start {
		c.t.startWriter()
	}
}

// handOff ends a direct hold on the write right (writeNow's, or the
// upgrade handler's): a write side takes it over when work is left (the
// rest of a frame the socket did not take, a batch to flush, or work
// queued meanwhile), and otherwise it goes back to idle. unflushed says
// that the transport's buffer holds bytes still to be written.
func (c *Client) handOff(unflushed bool) {
	c.mu.Lock()
	pump := unflushed || c.hasWorkLocked()
	if pump {
		c.writer = writePumping
	} else {
		c.writer = writeIdle
	}
	c.mu.Unlock()
	c.startPump(pump)
}

// takeWork swaps out the send queue, the pending pong, a due ping and the
// close reason for the write side. done is the batch it has finished
// writing. When there is nothing to do it gives the write right back
// (idle is true) and the write side must stop: the next piece of work
// starts it again.
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

// hasWorkLocked reports whether there is anything for a write side to do;
// c.mu must be held.
func (c *Client) hasWorkLocked() bool {
	return len(c.sendQueue) > 0 || c.pendingPong != nil || c.pingDue || c.closing != nil
}

// maxKeptQueue is the longest send-queue slice a client keeps for reuse.
const maxKeptQueue = 64

// work is what the write side takes in one swap.
type work struct {
	batch   []*message
	pong    *string
	ping    bool
	closing *disconnect
}

// deliveredUpTo counts the messages of chunk that fit in the n bytes
// written (all of them when err is nil) as delivered; size is a message's
// bytes on the wire for the transport.
func (c *Client) deliveredUpTo(chunk []*message, n int, err error, size func(*message) int) {
	if err != nil {
		k := 0
		for ; k < len(chunk); k++ {
			if n < size(chunk[k]) {
				break
			}
			n -= size(chunk[k])
		}
		chunk = chunk[:k]
	}
	c.delivered(chunk)
}

// delivered counts msgs as written to the peer and observes their latency.
func (c *Client) delivered(msgs []*message) {
	now := time.Now()
	for _, msg := range msgs {
		c.hub.deliveryLatency.Observe(now.Sub(msg.received).Seconds())
	}
	c.hub.stats.FramesDelivered.Add(uint64(len(msgs)))
}

// How a connection ends, for both transports. The write side ends with
// closeWriteSide once it has written the close (or failed); the read side
// (a WebSocket's read pump, an SSE stream's readSide) ends with leave
// once the peer is gone or the connection is closed. Each releases its
// count in the hub's WaitGroup.

// closeWriteSide ends the write side, by the goroutine that holds the
// write right: nobody writes again, what is left in the send queue is
// taken off the hub's pressure, and a connection the daemon itself ended
// for a counted reason is logged (slow and flood at Warn, an expired
// token at Info; the ordinary ends are logged by leave as "Client
// unregistered"). The transport has closed its socket first.
func (c *Client) closeWriteSide() {
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

// leave ends the read side: the peer is gone or the connection was
// closed. It wakes a close frame waiting for the peer's answer, stops the
// expiry timer, ends the connection if nothing else did (disconnectGone),
// takes the client out of the hub and logs "Client unregistered".
func (c *Client) leave() {
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
	c.hub.wg.Done()
}

// newClient returns the transport-independent part of a connection of
// username, which a transport embeds (one allocation per connection); the
// transport sets c.t.
func newClient(hub *Hub, username, remote string) Client {
	return Client{hub: hub, settings: &hub.settings, username: username, remote: remote}
}
