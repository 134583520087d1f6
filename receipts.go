package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
)

// Read receipts: a fanout.v1 WebSocket client sends {"ack":"<event id>"},
// an SSE client POSTs {"id":"<event id>"} to /ack, and the daemon records per
// user the highest id acknowledged (history.AckScript), across instances,
// publishing each change on RECEIPTS_CHANNEL. Acks are batched: at most
// one Redis write per user per second per instance.

// receiptTracker takes the acks of this instance's clients. A mode chosen
// at start-up: with HISTORY=off events have no ids, and receiptsOff only
// says so.
type receiptTracker interface {
	// ack records that a client of username acknowledged id; an error
	// says why it is ignored (counted in receipts_ignored).
	ack(username, id string) error
	// run writes the acks to Redis once a second until ctx ends, then
	// writes what is left and returns.
	run(ctx context.Context)
	// seen returns username's seen id ("" for none).
	seen(ctx context.Context, username string) (string, error)
}

var (
	errNoHistory = errors.New("HISTORY=off: events have no ids to acknowledge")
	errNotAnID   = errors.New("not an event id (ids look like 1733050000000-0)")
)

// receiptsOff is HISTORY=off.
type receiptsOff struct{ stats *Stats }

func (r receiptsOff) ack(string, string) error {
	r.stats.ReceiptsIgnored.Add(1)
	return errNoHistory
}
func (receiptsOff) run(context.Context) {}
func (receiptsOff) seen(context.Context, string) (string, error) {
	return "", errNoHistory
}

// receiptsEvery is the least time between two writes of one user's acks
// by one instance: how late, at most, an ack or a publication owed is
// written after the user's last write.
const receiptsEvery = time.Second

// receiptsTick is how often the acks that are due are written. Users' acks
// come at their own moments, so small frequent writes spread the Redis work
// over the second. Measured with S2-ack (2 000 users acknowledging once a
// second): one write a second for every user at once held Redis, and the
// events recorded behind it, long enough for a delivery p99 of 14.7 ms;
// every 50 ms, 4.8 ms; every 10 ms, 2.6 ms (S2 without acks: 1.4 ms).
const receiptsTick = 10 * time.Millisecond

// receiptsBatch bounds the script calls of one pipeline.
const receiptsBatch = 1000

// redisReceipts is HISTORY=on.
type redisReceipts struct {
	rdb     redis.UniversalClient
	layout  history.Layout
	channel string
	ttl     time.Duration
	stats   *Stats
	logger  *slog.Logger
	errLog  *logLimiter

	mu sync.Mutex
	// pending holds, per user, the highest id acknowledged since the last
	// write, or "" when only a publication is owed (the user's seen id
	// moved less than a second after the last publication).
	pending map[string]string
	// written holds when each user written in the last receiptsEvery was
	// written: it is not written again before receiptsEvery has passed.
	written map[string]time.Time
	// kick wakes run when an ack arrives while it idles: with nothing
	// pending and nobody written in the last second, it stops ticking.
	kick wakeup
}

func newReceipts(cfg Config, rdb redis.UniversalClient, stats *Stats, logger *slog.Logger) receiptTracker {
	if !cfg.History {
		return receiptsOff{stats: stats}
	}
	return &redisReceipts{rdb: rdb, layout: history.Layout{Sharded: cfg.PubSubSharded}, channel: cfg.ReceiptsChannel,
		ttl: cfg.Retention.TTL, stats: stats, logger: logger, errLog: newLogLimiter(1.0/10, 1),
		pending: make(map[string]string), written: make(map[string]time.Time), kick: newWakeup()}
}

func (r *redisReceipts) ack(username, id string) error {
	p, ok := history.ParseID(id)
	if !ok {
		r.stats.ReceiptsIgnored.Add(1)
		return errNotAnID
	}
	r.mu.Lock()
	r.keepHigherLocked(username, id, p)
	r.mu.Unlock()
	r.kick.wake()
	return nil
}

// keepHigherLocked makes id username's pending ack unless a higher one is
// pending; r.mu must be held.
func (r *redisReceipts) keepHigherLocked(username, id string, p history.ID) {
	if cur, ok := r.pending[username]; ok && cur != "" {
		if q, _ := history.ParseID(cur); !q.Less(p) {
			return
		}
	}
	r.pending[username] = id
}

func (r *redisReceipts) seen(ctx context.Context, username string) (string, error) {
	return r.layout.Seen(ctx, r.rdb, username)
}

func (r *redisReceipts) run(ctx context.Context) {
	t := time.NewTicker(receiptsTick)
	defer t.Stop()
	for {
		if r.idle() {
			// No timer while nobody acknowledges anything.
			t.Stop()
			select {
			case <-r.kick:
				t.Reset(receiptsTick)
				continue
			case <-ctx.Done():
			}
		}
		select {
		case now := <-t.C:
			r.flush(ctx, now, false)
		case <-ctx.Done():
			// The connections are closed by now: their last acks, all of
			// them (a user written less than a second ago is written
			// again: the one exception to one write a second).
			last, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			r.flush(last, time.Now(), true)
			cancel()
			return
		}
	}
}

// idle reports whether there is nothing to write now or later: no ack
// pending, nobody written in the last receiptsEvery.
func (r *redisReceipts) idle() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending) == 0 && len(r.written) == 0
}

// flush writes the pending acks of the users not written in the last
// receiptsEvery (every pending one with all), in pipelines of
// receiptsBatch script calls. A call that failed is pending again; a
// publication owed is pending too, for the user's next write.
func (r *redisReceipts) flush(ctx context.Context, now time.Time, all bool) {
	r.mu.Lock()
	for u, at := range r.written {
		if now.Sub(at) >= receiptsEvery {
			delete(r.written, u)
		}
	}
	var users []string
	due := make(map[string]string)
	for u, id := range r.pending {
		if _, recent := r.written[u]; recent && !all {
			continue
		}
		users = append(users, u)
		due[u] = id
		delete(r.pending, u)
		r.written[u] = now
	}
	r.mu.Unlock()
	for len(users) > 0 {
		n := min(len(users), receiptsBatch)
		r.write(ctx, users[:n], due)
		users = users[n:]
	}
}

// write runs the ack script for users, with their pending ids.
func (r *redisReceipts) write(ctx context.Context, users []string, pending map[string]string) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	pipe := r.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(users))
	ttl := r.ttl.Milliseconds()
	for i, u := range users {
		cmds[i] = history.AckScript.EvalSha(ctx, pipe, []string{r.layout.SeenKey(u), r.layout.Key(u)},
			pending[u], r.channel, u, ttl)
	}
	err := history.ExecScripts(ctx, r.rdb, pipe)
	if err != nil {
		r.errLog.log(r.logger, slog.LevelWarn, "Recording read receipts failed; retrying", "err", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, u := range users {
		res, err := cmds[i].Int()
		switch {
		case err != nil:
			r.stats.ReceiptsErrors.Add(1)
			if id := pending[u]; id != "" {
				p, _ := history.ParseID(id)
				r.keepHigherLocked(u, id, p)
			} else if _, ok := r.pending[u]; !ok {
				r.pending[u] = ""
			}
			continue
		case res < 0:
			r.stats.ReceiptsIgnored.Add(1)
			continue
		case res&1 == 1:
			r.stats.ReceiptsRecorded.Add(1)
		}
		if res&2 == 2 {
			if _, ok := r.pending[u]; !ok {
				r.pending[u] = ""
			}
		}
	}
}

// maxAckBody bounds a POST /ack body.
const maxAckBody = 1024

// handleAck answers POST /ack: an SSE client (or any HTTP client) acknowledges
// an event of its user, {"id":"<event id>"}, under the same identity rules
// as /events. 204 when the ack is taken (it is checked against the user's
// history when written, within a second); 400 with a one-line reason when
// it is not an id.
func (s *Server) handleAck(w http.ResponseWriter, r *http.Request) {
	id, remote, ok := s.identifyRequest(w, r)
	if !ok {
		return
	}
	var body struct {
		ID *string `json:"id"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxAckBody)).Decode(&body); err != nil || body.ID == nil {
		s.stats.ReceiptsIgnored.Add(1)
		s.refuse(w, remote, &refusal{status: http.StatusBadRequest, reason: rejectBadRequest,
			message: `/ack: the body must be {"id":"<event id>"}, at most 1 KiB`})
		return
	}
	if err := s.hub.receipts.ack(id.username, *body.ID); err != nil {
		s.refuse(w, remote, &refusal{status: http.StatusBadRequest, reason: rejectBadRequest, message: "/ack: " + err.Error()})
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleSeen answers GET /ack: the seen id of the request's user (the
// identity rules of /events), {"username":"alice","seen":"<id>"} or
// "seen":null. The console page shows it.
func (s *Server) handleSeen(w http.ResponseWriter, r *http.Request) {
	id, remote, ok := s.identifyRequest(w, r)
	if !ok {
		return
	}
	seen, err := s.hub.receipts.seen(r.Context(), id.username)
	if err != nil {
		s.refuse(w, remote, &refusal{status: http.StatusServiceUnavailable, reason: rejectNotSubscribed, message: "/ack: " + err.Error(), retryAfter: 1})
		return
	}
	line := struct {
		Username string  `json:"username"`
		Seen     *string `json:"seen"`
	}{Username: id.username}
	if seen != "" {
		line.Seen = &seen
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(line)
}

// identifyRequest runs identify for a request that acts as a user without
// opening a connection (/ack), with the CORS headers of an allowed origin.
// When ok is false it has answered the refusal.
func (s *Server) identifyRequest(w http.ResponseWriter, r *http.Request) (id identity, remote string, ok bool) {
	client := clientAddr(r, s.cfg.TrustedProxies)
	remote = client.String()
	if !client.IsValid() {
		remote = r.RemoteAddr
	}
	s.corsHeaders(w, r, true)
	id, refused := s.identify(r, client)
	if refused != nil {
		s.refuse(w, remote, refused)
		return identity{}, remote, false
	}
	return id, remote, true
}

// handleAckPreflight answers a browser's CORS preflight for POST /ack from
// an allowed origin (fetch with a JSON content type or an Authorization
// header).
func (s *Server) handleAckPreflight(w http.ResponseWriter, r *http.Request) {
	s.corsHeaders(w, r, true)
	if w.Header().Get("Access-Control-Allow-Origin") != "" {
		w.Header().Set("Access-Control-Allow-Methods", "POST")
		w.Header().Set("Access-Control-Allow-Headers", "Content-Type, Authorization")
		w.Header().Set("Access-Control-Max-Age", "600")
	}
	w.WriteHeader(http.StatusNoContent)
}
