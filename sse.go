package main

import (
	"bytes"
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// sseHeartbeat is how often an SSE stream gets a comment line, so that
// proxies and browsers see it alive between events (a variable for tests).
var sseHeartbeat = 15 * time.Second

// sseRetry is the reconnection delay an EventSource is told to use.
const sseRetry = 2 * time.Second

// sseClient is a Client over an SSE stream, the HTTP response of one
// /events request. The request's goroutine is both of its sides: it is
// the connection's write side (serveSSE), woken when work is queued, and it
// notices the peer going away through the request's context. The hub's
// pinger asks it for a heartbeat comment every sseHeartbeat, as it asks a
// WebSocket for a ping: no timer per stream.
type sseClient struct {
	Client
	w  http.ResponseWriter
	rc *http.ResponseController
	// woken holds a token when the request's goroutine has work to take.
	woken wakeup
	// stop ends the goroutine's wait when shutdown gives up on it.
	stop context.CancelFunc
	// buf is the holder of the write right's (client.go).
	buf bytes.Buffer
}

// startWriter tells the request's goroutine that work is queued.
func (c *sseClient) startWriter() { c.woken.wake() }

func (c *sseClient) claimable() bool          { return false }
func (c *sseClient) writeNow(*message)        { panic("sseClient: writeNow without a claim") }
func (c *sseClient) controls() bool           { return true }
func (c *sseClient) pingEvery() time.Duration { return sseHeartbeat }

// abort makes a write stuck on a client that does not read fail at once,
// and ends the stream; shutdown calls it when its time is up.
func (c *sseClient) abort() {
	_ = c.rc.SetWriteDeadline(time.Now())
	c.stop()
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
	ctx, stop := context.WithCancel(r.Context())
	defer stop()
	c := &sseClient{Client: newClient(s.hub, id.username, remote), w: w, rc: http.NewResponseController(w), woken: newWakeup(), stop: stop}
	c.t = c
	// This goroutine holds the write right until the retry line is out:
	// events broadcast meanwhile queue behind it.
	c.writer = writeDirect
	c.expires = id.expires
	if id.subject != "" && id.subject != id.username {
		s.logger.Info("New SSE connection", "username", id.username, "remote", remote, "subject", id.subject)
	} else {
		s.logger.Info("New SSE connection", "username", id.username, "remote", remote)
	}
	// In the hub before the response starts: an event published once the
	// client has its first bytes waits in the queue for serveSSE, this
	// goroutine, which alone writes the stream.
	if err := s.hub.addAndCatchUp(&c.Client, req); err != nil {
		s.refuse(w, remote, &refusal{status: http.StatusServiceUnavailable, reason: rejectShuttingDown, message: err.Error()})
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	// nginx would otherwise buffer the stream.
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	c.buf.WriteString("retry: " + strconv.Itoa(int(sseRetry/time.Millisecond)) + "\n\n")
	if err := c.flush(); err != nil {
		// serveSSE returns at once and unregisters the client.
		stop()
	}
	// serveSSE takes over what was queued meanwhile.
	c.handOff(false)
	c.serveSSE(ctx)
}

// serveSSE is an SSE connection's write side, on its request's goroutine:
// it writes what takeWork gives it when woken (events, a heartbeat comment
// for a due ping, the end), and returns when the connection ends (the
// client went away, a write failed, or the daemon closed it), after which
// the response ends. It ends both of the connection's sides.
func (c *sseClient) serveSSE(ctx context.Context) {
	defer func() {
		c.disconnect(disconnectGone)
		c.closeWriteSide()
		c.leave()
	}()
	var batch []*message
	for {
		select {
		case <-c.woken:
		case <-ctx.Done():
			return
		}
		for {
			w, idle := c.takeWork(batch)
			if idle {
				// takeWork may keep batch's array as the next send
				// queue: it is no longer ours.
				batch = nil
				break
			}
			batch = w.batch
			if w.ping || w.pong != nil {
				c.buf.WriteString(": heartbeat\n\n")
			}
			for _, msg := range w.batch {
				if c.eventsStopped.Load() {
					break
				}
				c.writeEvent(msg)
			}
			if c.eventsStopped.Load() {
				return
			}
			if err := c.flush(); err != nil {
				return
			}
			c.delivered(w.batch)
			if w.closing != nil {
				return
			}
		}
	}
}

// writeEvent appends msg to the buffer as one SSE event: its id and its
// payload as data lines (a line break in the payload, JSON whitespace,
// starts another data line), or a control as a named event.
func (c *sseClient) writeEvent(msg *message) {
	b := &c.buf
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
}

// flush writes the buffer and flushes the response, within WRITE_WAIT.
func (c *sseClient) flush() error {
	_ = c.rc.SetWriteDeadline(time.Now().Add(c.settings.writeWait))
	_, err := c.w.Write(c.buf.Bytes())
	c.buf.Reset()
	if err == nil {
		err = c.rc.Flush()
	}
	return err
}
