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

// sseStream is the HTTP response of one /events connection. Its request's
// goroutine is the connection's only writer (its write pump); the hub wakes
// it when work is queued.
type sseStream struct {
	w  http.ResponseWriter
	rc *http.ResponseController
	// woken holds a token when the request's goroutine has work to take.
	woken chan struct{}
	// stop ends the goroutine's wait when shutdown gives up on it.
	stop context.CancelFunc
	buf  bytes.Buffer
}

// wake tells the request's goroutine that work is queued.
func (st *sseStream) wake() {
	select {
	case st.woken <- struct{}{}:
	default:
	}
}

// abort makes a write stuck on a client that does not read fail at once,
// and ends the stream; shutdown calls it when its time is up.
func (st *sseStream) abort() {
	_ = st.rc.SetWriteDeadline(time.Now())
	st.stop()
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
	st := &sseStream{w: w, rc: http.NewResponseController(w), woken: make(chan struct{}, 1), stop: stop}
	c := newClient(s.hub, nil, id.username, remote)
	c.expires = id.expires
	c.sse = st
	if id.subject != "" && id.subject != id.username {
		s.logger.Info("New SSE connection", "username", id.username, "remote", remote, "subject", id.subject)
	} else {
		s.logger.Info("New SSE connection", "username", id.username, "remote", remote)
	}
	// In the hub before the response starts: an event published once the
	// client has its first bytes waits in the queue for serveSSE, this
	// goroutine, which alone writes the stream.
	if err := s.hub.addAndReplay(c, req); err != nil {
		s.refuse(w, remote, &refusal{status: http.StatusServiceUnavailable, reason: rejectShuttingDown, message: err.Error()})
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	// nginx would otherwise buffer the stream.
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	st.buf.WriteString("retry: " + strconv.Itoa(int(sseRetry/time.Millisecond)) + "\n\n")
	if err := st.flush(s.cfg.WriteWait); err != nil {
		// serveSSE returns at once and unregisters the client.
		stop()
	}
	c.serveSSE(ctx)
}

// serveSSE is an SSE connection's write pump, on its request's goroutine:
// it writes what takeWork gives it when woken, a comment every
// sseHeartbeat, and returns when the connection ends (the client went
// away, a write failed, or the daemon closed it), after which the response
// ends. It stands for both of the connection's counts in the hub's
// WaitGroup.
func (c *Client) serveSSE(ctx context.Context) {
	st := c.sse
	defer func() {
		if c.expiry != nil {
			c.expiry.Stop()
		}
		c.disconnect(disconnectGone)
		c.mu.Lock()
		c.writer = writeEnded
		c.readEnded = true
		d := c.closing
		c.dropQueueLocked()
		c.mu.Unlock()
		if d != nil && (*d == disconnectSlow || *d == disconnectExpired) {
			c.hub.logger.Info("Closing client", "username", c.username, "remote", c.remote, "code", d.code, "reason", d.reason)
		}
		remaining := c.hub.unregister(c)
		c.hub.logger.Info("Client unregistered", "username", c.username, "remaining_for_user", remaining)
		c.hub.wg.Done()
		c.hub.wg.Done()
	}()
	heartbeat := time.NewTicker(sseHeartbeat)
	defer heartbeat.Stop()
	var batch []*message
	for {
		select {
		case <-st.woken:
		case <-heartbeat.C:
			st.buf.WriteString(": heartbeat\n\n")
			if st.flush(c.settings.writeWait) != nil {
				return
			}
			continue
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
				st.buf.WriteString(": ping\n\n")
			}
			for _, msg := range w.batch {
				if c.eventsStopped.Load() {
					break
				}
				st.writeEvent(msg)
			}
			if c.eventsStopped.Load() {
				return
			}
			if err := st.flush(c.settings.writeWait); err != nil {
				return
			}
			c.delivered(w.batch, 0, nil)
			if w.closing != nil {
				return
			}
		}
	}
}

// writeEvent appends msg to the buffer as one SSE event: its id and its
// payload as data lines (a line break in the payload, JSON whitespace,
// starts another data line), or a control as a named event.
func (st *sseStream) writeEvent(msg *message) {
	b := &st.buf
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

// flush writes the buffer and flushes the response, within writeWait.
func (st *sseStream) flush(writeWait time.Duration) error {
	_ = st.rc.SetWriteDeadline(time.Now().Add(writeWait))
	_, err := st.w.Write(st.buf.Bytes())
	st.buf.Reset()
	if err == nil {
		err = st.rc.Flush()
	}
	return err
}

// endStreams ends every SSE connection with disconnectShutdown: the HTTP
// server's shutdown waits for their requests, which would otherwise never
// end. EventSource reconnects, to another instance, with Last-Event-ID.
func (h *Hub) endStreams() {
	var streams []*Client
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.RLock()
		for _, conns := range s.users {
			for c := range conns {
				if c.sse != nil {
					streams = append(streams, c)
				}
			}
		}
		s.mu.RUnlock()
	}
	for _, c := range streams {
		c.disconnect(disconnectShutdown)
	}
}
