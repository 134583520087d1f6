package main

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"fanout/internal/wsconn"
)

// sseHeartbeat is how often an SSE stream gets a comment line, so that
// proxies and browsers see it alive between events (a variable for tests).
var sseHeartbeat = 15 * time.Second

// sseRetry is the reconnection delay an EventSource is told to use.
const sseRetry = 2 * time.Second

// sseClient is a Client over an SSE stream, the HTTP response of one
// /events request. Once the response's headers and the retry line are out,
// the connection is taken over from net/http (wsconn.Hijack) and served as
// a WebSocket is: a write side runs only while there is something to write
// (events, a heartbeat comment for a due ping, the end), an idle stream is
// claimed by broadcast and written without a goroutine (writeNow), and the
// read side, which only watches for the client going away, is parked in
// wsconn's parking lot. An idle stream so holds no goroutine, no buffer and
// no timer: the hub's pinger asks it for a heartbeat every sseHeartbeat, as
// it asks a WebSocket for a ping.
//
// The body keeps net/http's framing: chunked for an HTTP/1.1 request (one
// chunk per event, the last chunk when the stream ends), the bare stream
// until the connection closes for HTTP/1.0.
type sseClient struct {
	Client
	// stream is the connection once taken over; set before any write side
	// starts. taken is the same, for abort, which may come first.
	stream *wsconn.Stream
	taken  atomic.Pointer[wsconn.Stream]
	// rc is the response's controller, until the connection is taken over.
	rc *http.ResponseController
	// chunked is set when the response is chunked (HTTP/1.1).
	chunked bool
	// unflushed is a message writeNow handed to the socket only in part;
	// owned by the holder of the write right, like wsClient's.
	unflushed *message
	// unread counts the bytes the client sent on the stream, which it has
	// no reason to: past maxClientMessageSize the stream ends. Owned by
	// the read side.
	unread int
}

func (c *sseClient) startWriter()             { go c.writePump() }
func (c *sseClient) claimable() bool          { return c.stream.CanWriteNow() }
func (c *sseClient) controls() bool           { return true }
func (c *sseClient) pingEvery() time.Duration { return sseHeartbeat }

// abort closes the socket, which unblocks a write side stuck on a client
// that does not read; before the connection is taken over, it makes the
// handler's write of the retry line fail at once.
func (c *sseClient) abort() {
	if s := c.taken.Load(); s != nil {
		_ = s.Close()
		return
	}
	_ = c.rc.SetWriteDeadline(time.Now())
}

// handleEvents answers /events: the same events as /ws, as a
// text/event-stream, with the same checks (admit), limits and slow-client
// policy. EventSource resumes on its own with the Last-Event-ID header.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	// EventSource with withCredentials sends the token cookie.
	id, req, remote, ok := s.admitRequest(w, r, true)
	if !ok {
		return
	}
	c := &sseClient{Client: newClient(s.hub, id.username, remote), chunked: r.ProtoAtLeast(1, 1), rc: http.NewResponseController(w)}
	c.t = c
	// This goroutine holds the write right until the connection is taken
	// over: events broadcast meanwhile queue behind it.
	c.writer = writeDirect
	c.expires = id.expires
	if id.subject != "" && id.subject != id.username {
		s.logger.Info("New SSE connection", "username", id.username, "remote", remote, "subject", id.subject)
	} else {
		s.logger.Info("New SSE connection", "username", id.username, "remote", remote)
	}
	// In the hub before the response starts: an event published once the
	// client has its first bytes waits in the queue for the write side.
	if err := s.hub.addAndCatchUp(&c.Client, req); err != nil {
		s.refuse(w, remote, &refusal{status: http.StatusServiceUnavailable, reason: rejectShuttingDown, message: err.Error()})
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	// nginx would otherwise buffer the stream.
	h.Set("X-Accel-Buffering", "no")
	// The connection is taken over below: it ends with the stream, and
	// a proxy must not keep it for another request.
	h.Set("Connection", "close")
	w.WriteHeader(http.StatusOK)
	_ = c.rc.SetWriteDeadline(time.Now().Add(c.settings.writeWait))
	_, err := io.WriteString(w, "retry: "+strconv.Itoa(int(sseRetry/time.Millisecond))+"\n\n")
	if err == nil {
		err = c.rc.Flush()
	}
	if err == nil {
		c.stream, err = wsconn.Hijack(w)
	}
	if err == nil {
		// An abort from here on closes the socket; one just before only
		// set a deadline that the write side's own deadlines replace, and
		// the write side, bounded by WRITE_WAIT, ends the stream anyway.
		c.taken.Store(c.stream)
	}
	if err != nil {
		// Both sides end here: nobody else has started either.
		s.logger.Debug("SSE stream failed to start", "username", id.username, "remote", remote, "err", err)
		c.disconnect(disconnectGone)
		c.closeWriteSide()
		c.leave()
		return
	}
	c.stream.SetResume(c.readSide)
	// A write side takes over what was queued meanwhile.
	c.handOff(false)
	if c.stream.Park() {
		return
	}
	c.readSide()
}

// readSide is the stream's read side: the client sends nothing on an SSE
// stream, so it reads only to notice the client's end (or the socket's
// close by the write side), and otherwise stays parked. It ends the read
// side (leave) once the connection is over.
func (c *sseClient) readSide() {
	var b [128]byte
	for {
		n, err := c.stream.Read(b[:])
		if err != nil {
			c.leave()
			return
		}
		if c.unread += n; c.unread > maxClientMessageSize {
			c.disconnect(disconnectFlood)
			c.leave()
			return
		}
		if c.stream.Park() {
			return
		}
	}
}

// writeNow writes msg for a broadcast that claimed the stream (see
// wsClient.writeNow): without waiting for the socket, whatever the socket
// does not take at once, and any work queued meanwhile, goes to a write
// side (handOff).
func (c *sseClient) writeNow(msg *message) {
	if c.eventsStopped.Load() {
		c.hub.stats.FramesDropped.Add(1)
		c.handOff(c.unflushed != nil)
		return
	}
	// Nobody writes an SSE stream outside the write right, so the cork is
	// always free.
	c.stream.Cork()
	c.writeChunk(msg.sseEvent())
	if done, err := c.stream.TryFlush(); err != nil {
		c.disconnect(disconnectGone)
	} else if !done {
		c.unflushed = msg
	} else {
		c.hub.deliveryLatency.Observe(time.Since(msg.received).Seconds())
		c.hub.stats.FramesDelivered.Add(1)
	}
	c.handOff(c.unflushed != nil)
}

// writePump writes what takeWork gives it (events, a heartbeat comment for
// a due ping, the end), each batch with one write, and returns when there
// is nothing left to do or the connection ends.
func (c *sseClient) writePump() {
	if c.stream.Buffered() > 0 {
		// Left by writeNow: the rest of its event.
		msg := c.unflushed
		c.unflushed = nil
		if _, err := c.stream.Flush(time.Now().Add(c.settings.writeWait)); err != nil {
			c.disconnect(disconnectGone)
			c.closeStream(false)
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
		if err := c.writeBatch(w); err != nil {
			c.disconnect(disconnectGone)
			c.closeStream(false)
			return
		}
		if w.closing != nil {
			c.closeStream(true)
			return
		}
	}
}

// writeBatch writes w's heartbeat and events, corked, flushing every
// wsconn.FlushBytes, and counts the events that reached the socket. Once
// events are stopped (the queue overflowed) nothing more is flushed.
func (c *sseClient) writeBatch(w work) error {
	deadline := time.Now().Add(c.settings.writeWait)
	c.stream.Cork()
	// from is where the events since the last flush start; control is the
	// bytes of the heartbeat ahead of them.
	from, control := 0, 0
	flush := func(upTo int) error {
		if c.eventsStopped.Load() {
			c.stream.Discard()
			return nil
		}
		n, err := c.stream.Flush(deadline)
		c.deliveredUpTo(w.batch[from:upTo], n-control, err, c.eventSize)
		from, control = upTo, 0
		return err
	}
	if w.ping || w.pong != nil {
		c.writeChunk(sseHeartbeatComment)
		control = c.stream.Buffered()
	}
	for i, msg := range w.batch {
		c.writeChunk(msg.sseEvent())
		last := i == len(w.batch)-1
		if !last && c.stream.Buffered() < wsconn.FlushBytes {
			continue
		}
		if err := flush(i + 1); err != nil {
			return err
		}
		if c.eventsStopped.Load() {
			return nil
		}
		if !last {
			c.stream.Cork()
		}
	}
	if len(w.batch) == 0 {
		return flush(0)
	}
	return nil
}

// eventSize is the bytes on the wire of msg's event on this stream.
func (c *sseClient) eventSize(msg *message) int { return c.chunkSize(len(msg.sseEvent())) }

// closeStream ends the connection, by the write side: when the stream is
// at an event's end (clean), the last chunk ends the response, then the
// socket is closed, which resumes the parked read side, and the write side
// ends (closeWriteSide). A stream whose events were stopped (its queue
// overflowed) gets the last chunk only if the socket takes it at once.
func (c *sseClient) closeStream(clean bool) {
	if clean && c.chunked {
		c.stream.Cork()
		_, _ = c.stream.Write(lastChunk)
		if c.eventsStopped.Load() {
			_, _ = c.stream.TryFlush()
		} else {
			_, _ = c.stream.Flush(time.Now().Add(c.settings.writeWait))
		}
	}
	_ = c.stream.Close()
	c.stream.Discard()
	c.closeWriteSide()
}

// sseHeartbeatComment is the heartbeat: a comment line, which EventSource
// ignores.
var sseHeartbeatComment = []byte(": heartbeat\n\n")

// lastChunk ends a chunked response.
var lastChunk = []byte("0\r\n\r\n")

// writeChunk writes b (one event, or the heartbeat) to the corked stream,
// in a chunk of its own when the response is chunked.
func (c *sseClient) writeChunk(b []byte) {
	if !c.chunked {
		_, _ = c.stream.Write(b)
		return
	}
	var head [20]byte
	h := strconv.AppendInt(head[:0], int64(len(b)), 16)
	h = append(h, '\r', '\n')
	_, _ = c.stream.Write(h)
	_, _ = c.stream.Write(b)
	_, _ = c.stream.Write(crlf)
}

var crlf = []byte("\r\n")

// chunkSize is the bytes on the wire of an event of n bytes.
func (c *sseClient) chunkSize(n int) int {
	if !c.chunked {
		return n
	}
	return len(strconv.FormatInt(int64(n), 16)) + 2 + n + 2
}

// sseEvent is msg as one SSE event, made once and shared by every stream
// of the user: its id and its payload as data lines (a line break in the
// payload, JSON whitespace, starts another data line), or a control as a
// named event.
func (msg *message) sseEvent() []byte {
	if b := msg.sse.Load(); b != nil {
		return *b
	}
	var b bytes.Buffer
	if msg.event != "" {
		b.WriteString("event: ")
		b.WriteString(msg.event)
		b.WriteByte('\n')
	} else if msg.id != "" {
		b.WriteString("id: ")
		b.WriteString(msg.id)
		b.WriteByte('\n')
	}
	data := string(msg.data)
	data = strings.ReplaceAll(data, "\r\n", "\n")
	data = strings.ReplaceAll(data, "\r", "\n")
	for line := range strings.SplitSeq(data, "\n") {
		b.WriteString("data: ")
		b.WriteString(line)
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	ev := b.Bytes()
	// Two streams may make it at once: either copy does.
	msg.sse.Store(&ev)
	return ev
}
