package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
	"fanout/internal/redisx"
)

// A catch-up sends a connection the events it missed, from its user's
// history, before its live events, which wait meanwhile (catchUp.held).
// There are three kinds, one mechanism: a resume (?last_event_id= or the
// Last-Event-ID header), a late join (?history=N), both asked for when the
// connection opens (Hub.addAndCatchUp), and the catch-up after a lost
// Redis subscription (Hub.catchUpAfterLoss): once the user's channel is
// back, a connection that was sent an event with an id resumes after it.
//
// catchUps runs them.
//
// Reads are bounded so that thousands of clients resuming at once, after
// an instance died, leave Redis and live delivery responsive: at most
// concurrency reads run at once, each of at most page events, and a
// catch-up sends its next page only once the connection's writer has taken
// the previous one.
type catchUps struct {
	rdb redis.Cmdable
	// layout names the users' history keys (sharded or classic).
	layout    history.Layout
	retention history.Retention
	page      int64
	// maxBytes is MAX_MESSAGE_BYTES: larger entries are not replayed,
	// as they are not forwarded live.
	maxBytes int
	// slots holds one token per read that may run.
	slots  chan struct{}
	stats  *Stats
	logger *slog.Logger
	// errLog rate-limits the lines for failed reads.
	errLog *logLimiter
	// active counts the catch-ups in progress.
	active atomic.Int64
	// sync waits until the history holds every event published before
	// the user's channel was subscribed here (subscription.waitSynced:
	// in user mode with the recorder lease; at once elsewhere, where the
	// instance reads every event all along).
	sync func(ctx context.Context, user string)
}

// newCatchUps returns the catch-ups of a daemon with history; sync is its
// subscription's waitSynced.
func newCatchUps(rdb redis.Cmdable, cfg Config, stats *Stats, logger *slog.Logger, sync func(context.Context, string)) *catchUps {
	return &catchUps{
		rdb:       rdb,
		layout:    history.Layout{Sharded: cfg.PubSubSharded},
		retention: cfg.Retention,
		page:      int64(cfg.ReplayPage),
		maxBytes:  cfg.MaxMessageBytes,
		slots:     make(chan struct{}, cfg.ReplayConcurrency),
		stats:     stats,
		logger:    logger,
		errLog:    newLogLimiter(1, 5),
		sync:      sync,
	}
}

// replayRequest is where a connection's events start.
type replayRequest struct {
	// lastEventID, when resume is set, is the id the client saw last, as
	// it sent it.
	resume      bool
	lastEventID string
	// last, when above 0, asks for the last events retained (?history=N).
	last int64
}

// wanted reports whether the request asks for any history.
func (r replayRequest) wanted() bool { return r.resume || r.last > 0 }

// parseReplayRequest reads ?last_event_id=, the Last-Event-ID header and
// ?history=N. A bad history value is an error for a 400.
func parseReplayRequest(query func(string) string, lastEventIDHeader string) (replayRequest, error) {
	var req replayRequest
	if v := query("last_event_id"); v != "" {
		req.resume, req.lastEventID = true, v
	} else if lastEventIDHeader != "" {
		req.resume, req.lastEventID = true, lastEventIDHeader
	}
	if v := query("history"); v != "" {
		var n int64
		if _, err := fmt.Sscan(v, &n); err != nil || n < 0 || fmt.Sprint(n) != v {
			return req, fmt.Errorf("history=%q: must be a whole number of events, 0 or more", v)
		}
		req.last = n
	}
	return req, nil
}

// read runs one bounded history read.
func (p *catchUps) read(ctx context.Context, f func(context.Context) ([]history.Event, error)) ([]history.Event, error) {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-p.slots }()
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	evs, err := f(rctx)
	// A read that failed short of Redis's answer is tried again a few
	// times: just after a Cluster failover go-redis still sends a slot to
	// its dead master until its slot map is read again.
	for wait := readRetryFirst; err != nil && !redisx.IsReply(err) && wait <= readRetryLast; wait *= 2 {
		redisx.ReloadSlots(rctx, p.rdb)
		if !redisx.Sleep(rctx, wait) {
			break
		}
		evs, err = f(rctx)
	}
	return evs, err
}

// The waits before a failed history read is tried again: 100, 200 and
// 400 ms.
const (
	readRetryFirst = 100 * time.Millisecond
	readRetryLast  = 400 * time.Millisecond
)

// run sends c the events req asks for, then lets its live events
// through: those that arrived meanwhile were held (catchUp.held), and the
// ones the history already gave are dropped by id. It runs on a goroutine
// of the hub's and ends early when c ends or ctx does.
func (p *catchUps) run(ctx context.Context, c *Client, req replayRequest) {
	p.active.Add(1)
	defer p.active.Add(-1)
	user := c.username
	p.sync(ctx, user)
	cursor := "" // the last event sent; "" before any
	// Where the reading loop starts: after cursor, or from the oldest
	// retained event when fromStart is set.
	fromStart := false
	switch {
	case req.resume:
		resync := ""
		if _, ok := history.ParseID(req.lastEventID); !ok {
			resync = "last_event_id is not an event id"
		} else {
			evs, err := p.read(ctx, func(ctx context.Context) ([]history.Event, error) {
				return p.layout.From(ctx, p.rdb, user, req.lastEventID, p.page+1)
			})
			if err != nil {
				p.failed(c, err)
				return
			}
			if len(evs) > 0 && evs[0].ID == req.lastEventID {
				cursor = req.lastEventID
				if !p.send(ctx, c, evs[1:], &cursor) {
					return
				}
			} else {
				resync = p.resyncReason(ctx, user, req.lastEventID)
			}
		}
		if resync != "" {
			p.stats.HistoryResyncs.Add(1)
			if c.t.controls() {
				if !c.enqueueCatchUp([]*message{newControl("resync", resync)}) {
					return
				}
			}
			fromStart = true
		}
	case req.last > 0:
		n := min(req.last, p.retention.MaxLen)
		evs, err := p.read(ctx, func(ctx context.Context) ([]history.Event, error) {
			return p.layout.Last(ctx, p.rdb, user, n)
		})
		if err != nil {
			p.failed(c, err)
			return
		}
		cursor = "0-0" // nothing retained: every event from now on is new
		if !p.send(ctx, c, evs, &cursor) {
			return
		}
	}
	for {
		for {
			after := cursor
			if fromStart {
				after, fromStart = "", false
			}
			evs, err := p.read(ctx, func(ctx context.Context) ([]history.Event, error) {
				return p.layout.After(ctx, p.rdb, user, after, p.page)
			})
			if err != nil {
				p.failed(c, err)
				return
			}
			if !p.send(ctx, c, evs, &cursor) {
				return
			}
			if int64(len(evs)) < p.page {
				break
			}
		}
		if !c.finishCatchUp(cursor) {
			return
		}
	}
}

// resyncReason says why the history cannot resume after id.
func (p *catchUps) resyncReason(ctx context.Context, user, id string) string {
	first, err := p.read(ctx, func(ctx context.Context) ([]history.Event, error) {
		return p.layout.After(ctx, p.rdb, user, "", 1)
	})
	want, _ := history.ParseID(id)
	if err == nil && len(first) > 0 {
		if got, ok := history.ParseID(first[0].ID); ok && want.Less(got) {
			return "the events after last_event_id are no longer retained"
		}
	}
	if err == nil && len(first) == 0 {
		return "no events are retained for this user"
	}
	return "last_event_id is not in this user's history"
}

// send queues evs for c, skipping any that are not valid JSON (a publisher
// that wrote the history by hand), advances cursor, and waits until c's
// writer has taken them. It reports false when c ended or ctx did.
func (p *catchUps) send(ctx context.Context, c *Client, evs []history.Event, cursor *string) bool {
	if len(evs) == 0 {
		return true
	}
	msgs := make([]*message, 0, len(evs))
	now := time.Now()
	for _, ev := range evs {
		*cursor = ev.ID
		switch {
		case len(ev.Data) > p.maxBytes:
			p.stats.MessagesTooLarge.Add(1)
			continue
		case ev.Data == "" || !json.Valid([]byte(ev.Data)):
			p.stats.MessagesInvalid.Add(1)
			continue
		}
		msgs = append(msgs, newEvent(ev.ID, []byte(ev.Data), now))
	}
	if !c.enqueueCatchUp(msgs) {
		return false
	}
	p.stats.HistoryReplayed.Add(uint64(len(msgs)))
	return c.waitTaken(ctx)
}

// failed ends a catch-up whose read failed: the client is disconnected
// (it resumes again with the same id) rather than left with a gap.
func (p *catchUps) failed(c *Client, err error) {
	if errors.Is(err, context.Canceled) {
		return // shutdown: the client is being closed with 1001
	}
	p.errLog.log(p.logger, slog.LevelWarn, "Reading history failed; closing the connection so that it resumes", "username", c.username, "err", err)
	c.disconnect(disconnectHistoryUnavailable)
}

// catchUp is the state of a connection catching up on its history,
// guarded by its client's mu.
type catchUp struct {
	// done is set by finishCatchUp: live events flow again.
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

// enqueueCatchUp queues msgs, read from the history by a catch-up, for the
// writer; the catch-up paces itself (waitTaken), so the send queue's bounds
// do not apply. It reports false when the connection is ending.
func (c *Client) enqueueCatchUp(msgs []*message) bool {
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

// finishCatchUp ends a catch-up that has sent the history up to cursor:
// the live events held meanwhile are queued, less those the history
// already gave, and live events flow from now on. When more were held than
// a send queue holds (they were dropped), it reports more: the catch-up
// reads them from the history and calls it again.
func (c *Client) finishCatchUp(cursor string) (more bool) {
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
