package main

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
)

const (
	// recordBatchMax is the most events recorded in one round trip.
	recordBatchMax = 512
	// cursorIdle is how long a user's place in history is kept after
	// their last event.
	cursorIdle = 10 * time.Minute
	// recordTimeout bounds one round trip; past it the batch is
	// delivered without ids.
	recordTimeout = 2 * time.Second
	// waitFirstMax is how long a user's first events after a new
	// subscription wait for the instances subscribed all along to record
	// them (recorder.waitFirst) before this instance appends them itself;
	// pendingRetry is how often they are offered again meanwhile.
	waitFirstMax = 500 * time.Millisecond
	pendingRetry = 5 * time.Millisecond
)

// inbound is one valid event from the subscription, on its way to the
// recorder; reset says the subscription was renewed, so messages may have
// been missed, and since is when it was asked for, by Redis's clock; a
// reset with a username is about that user's channel alone (user mode).
type inbound struct {
	username string
	payload  string
	received time.Time
	// id is the event's id when it came in a publish script's envelope
	// (history.Envelope): it is in the history already.
	id    string
	reset bool
	since time.Time
	// ack, on the lease holder's recording subscription, is the probe
	// channel to publish payload on once every event before is recorded.
	ack string
	// sole is the marker of a generation of this instance's hold on
	// history.SoloKey (soleRecorder): the events read after it were
	// published while no other instance read events.
	sole uint64
}

// recorder gives every event its id in its user's history before it is
// broadcast: whatever the subscription delivered while the previous batch
// was being recorded goes to Redis in one pipelined round trip (one
// history.RecordSource call per user), then to the hub, in the order it
// arrived. Its goroutine is owned by the subscriber's run.
type recorder struct {
	rdb redis.UniversalClient
	// layout names the users' history keys (sharded or classic).
	layout    history.Layout
	retention history.Retention
	in        chan inbound
	broadcast func(username string, msg *message)
	stats     *Stats
	logger    *slog.Logger
	errLog    *logLimiter
	// cursors is this instance's place in each recent user's history;
	// horizon is the place of every other user (history.RecordSource):
	// when the subscription began, or the newest place dropped since.
	cursors   map[string]*userCursor
	horizon   history.Cursor
	lastSweep time.Time
	// waitFirst, when true, says another instance records every
	// event all along (user mode's recorder lease): a user's first events
	// after a new subscription are then found in the history, not
	// appended ahead of the ones published just before them, which that
	// instance may not have recorded yet (history.RecordSource). They
	// wait in pending, in order, at most waitFirstMax since waiting.
	waitFirst func() bool
	pending   map[string][]inbound
	waiting   map[string]time.Time
	// stall, set by tests, holds every recording until it is closed: a
	// recorder falling behind.
	stall atomic.Pointer[chan struct{}]
	// callOf says which record script call of a batch a user's key goes
	// in: all in one on one Redis (and Sentinel), one per hash slot on a
	// Redis Cluster, where a script's keys share a slot.
	callOf func(key string) int
	// owner names this instance in the record script's fence ("" on a
	// Redis Cluster: history.RecordUsersAs).
	owner string
	// sole, in pattern mode on one Redis, says whether this instance
	// holds history.SoloKey, and in which generation (soleRecorder).
	sole *soleRecorder

	// mu guards cursors, horizon, waiting and queued: the recorder's
	// goroutine holds it while it works on a batch, except during its
	// round trips to Redis, and add takes it to deliver an event that
	// came with its id at once. Broadcasts run under it: it comes before
	// the hub's locks.
	mu sync.Mutex
	// queued counts, per user, the events handed to run and not yet
	// broadcast (pending ones included); queuedMarkers the resets and
	// markers handed to run and not yet handled. An event with its id is
	// delivered at once only when nothing is queued before it.
	queued        map[string]int
	queuedMarkers int
	// soleFrom is the generation whose marker the recorder read last
	// (inbound.sole), under mu: while this instance still holds
	// history.SoloKey in that generation, the events read since were
	// published with no other instance reading, and are appended alone.
	soleFrom uint64
}

type userCursor struct {
	cur  history.Cursor
	used time.Time
}

func newRecorder(rdb redis.UniversalClient, owner string, layout history.Layout, retention history.Retention, broadcast func(string, *message), stats *Stats, logger *slog.Logger) *recorder {
	if _, onCluster := rdb.(*redis.ClusterClient); onCluster {
		owner = ""
	}
	return &recorder{
		owner:     owner,
		rdb:       rdb,
		layout:    layout,
		retention: retention,
		in:        make(chan inbound, 4*recordBatchMax),
		broadcast: broadcast,
		stats:     stats,
		logger:    logger,
		errLog:    newLogLimiter(1, 5),
		cursors:   make(map[string]*userCursor),
		lastSweep: time.Now(),
		waitFirst: func() bool { return false },
		pending:   make(map[string][]inbound),
		waiting:   make(map[string]time.Time),
		callOf:    recordCalls(rdb),
		queued:    make(map[string]int),
	}
}

// recordCalls returns the recorder's callOf for rdb.
func recordCalls(rdb redis.UniversalClient) func(key string) int {
	if _, onCluster := rdb.(*redis.ClusterClient); onCluster {
		return history.Slot
	}
	return func(string) int { return 0 }
}

// records reports true: a recorder's resets need Redis's clock
// (eventSink).
func (r *recorder) records() bool { return true }

// add hands in to the recorder, waiting while it is a full batch and more
// behind; it reports false when ctx ended first. An event that came with
// its id (an envelope) and has nothing of its user queued before it is
// broadcast at once, on the caller's goroutine: it needs no round trip,
// and waits for no other user's.
func (r *recorder) add(ctx context.Context, in inbound) bool {
	r.mu.Lock()
	switch {
	case in.reset || in.ack != "" || in.sole != 0:
		r.queuedMarkers++
	case in.id != "" && r.queuedMarkers == 0 && r.queued[in.username] == 0:
		// Broadcast under mu: nothing of the user can be queued
		// meanwhile (a user's channel is read by one subscription
		// connection, one message at a time).
		r.known(in.username, in.id, time.Now())
		r.broadcast(in.username, newEvent(in.id, []byte(in.payload), in.received))
		r.stats.MessagesReceived.Add(1)
		r.mu.Unlock()
		return true
	default:
		r.queued[in.username]++
	}
	r.mu.Unlock()
	select {
	case r.in <- in:
		return true
	case <-ctx.Done():
		return false
	}
}

// known moves username's place in history past id, an event that came
// with its id (history.Cursor.Known). mu must be held.
func (r *recorder) known(username, id string, now time.Time) {
	if uc := r.cursors[username]; uc != nil {
		uc.cur, uc.used = uc.cur.Known(id), now
	} else {
		r.cursors[username] = &userCursor{cur: r.horizon.Known(id), used: now}
	}
	// Its first event is found: nothing to wait for (recorder.waitFirst).
	delete(r.waiting, username)
}

// run records and broadcasts until ctx ends.
func (r *recorder) run(ctx context.Context) {
	batch := make([]inbound, 0, recordBatchMax)
	retry := time.NewTimer(pendingRetry)
	defer retry.Stop()
	for {
		if len(r.pending) > 0 {
			retry.Reset(pendingRetry)
		} else {
			retry.Stop()
		}
		select {
		case <-ctx.Done():
			return
		case <-retry.C:
			r.process(ctx, nil)
			continue
		case first := <-r.in:
			batch = append(batch[:0], first)
		}
	more:
		for len(batch) < recordBatchMax {
			select {
			case in := <-r.in:
				batch = append(batch, in)
			default:
				break more
			}
		}
		r.process(ctx, batch)
		clear(batch)
	}
}

// process records and broadcasts a batch; a reset in it forgets every
// place in history from there on.
func (r *recorder) process(ctx context.Context, batch []inbound) {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := 0
	for i, in := range batch {
		if !in.reset && in.ack == "" && in.sole == 0 {
			continue
		}
		r.record(ctx, batch[start:i])
		start = i + 1
		r.queuedMarkers--
		if in.sole != 0 {
			r.soleFrom = in.sole
			continue
		}
		if in.ack != "" {
			actx, cancel := context.WithTimeout(ctx, recordTimeout)
			r.mu.Unlock()
			err := r.rdb.Publish(actx, in.ack, in.payload).Err()
			r.mu.Lock()
			if err != nil && ctx.Err() == nil {
				r.errLog.log(r.logger, slog.LevelWarn, "Could not answer a subscription marker", "err", err)
			}
			cancel()
			continue
		}
		if in.username != "" {
			// One user's channel was subscribed again (user mode).
			r.flushPending(ctx, in.username)
			r.cursors[in.username] = &userCursor{cur: history.Horizon(in.since), used: time.Now()}
			continue
		}
		r.flushPending(ctx, "")
		clear(r.cursors)
		r.horizon = history.Horizon(in.since)
	}
	r.record(ctx, batch[start:])
	if now := time.Now(); now.Sub(r.lastSweep) > time.Minute {
		r.lastSweep = now
		r.dropIdle(now)
	}
}

// flushPending records username's pending events (every user's for "")
// without waiting any more, before their place in history is lost: from
// the next horizon they would not be found.
func (r *recorder) flushPending(ctx context.Context, username string) {
	n := 0
	for u, evs := range r.pending {
		if username == "" || u == username {
			r.waiting[u] = time.Time{}
			n += len(evs)
		}
	}
	if n > 0 {
		r.record(ctx, nil)
	}
}

// dropIdle forgets the places of users with no event for cursorIdle; the
// horizon moves to the newest of them, which is after every entry this
// instance matched for any user it has no place for.
func (r *recorder) dropIdle(now time.Time) {
	newest, _ := history.ParseID(r.horizon.After)
	for u, uc := range r.cursors {
		if now.Sub(uc.used) <= cursorIdle {
			continue
		}
		delete(r.cursors, u)
		if id, ok := history.ParseID(uc.cur.After); ok && newest.Less(id) {
			newest = id
		}
	}
	r.horizon = history.Cursor{After: newest.String()}
}

// cursor returns this instance's place in username's history: its own,
// or the horizon.
func (r *recorder) cursor(username string) history.Cursor {
	if uc := r.cursors[username]; uc != nil {
		return uc.cur
	}
	return r.horizon
}

// recordKnown gives the events of the users whose ids all came in
// envelopes those ids, in ids, and moves their places in history past
// them; it returns how many users are left for the record script.
func (r *recorder) recordKnown(users map[string]*userBatch, order []string, evs []inbound, ids []string, now time.Time) (scripted int) {
	for _, u := range order {
		ub := users[u]
		if !ub.known {
			scripted++
			continue
		}
		for _, i := range ub.index {
			ids[i] = evs[i].id
			r.known(u, evs[i].id, now)
		}
	}
	return scripted
}

// userBatch is one user's events in a batch.
type userBatch struct {
	index    []int
	payloads []string
	// known is true while every event of the user in the batch came with
	// its id (an envelope): they need no round trip.
	known bool
	// recorded is what the record script returned for the user, or err.
	recorded history.UserRecorded
	err      error
}

// record gives evs their ids, in one round trip, and broadcasts them in
// order. mu must be held; record releases it during the round trip (and
// while a test stalls it). Events whose recording failed are delivered without an id. A
// user whose events in the batch all came in envelopes needs no round
// trip: their ids are known, and only this instance's place in the user's
// history moves (history.Cursor.Known); a batch of such users is
// broadcast at once.
func (r *recorder) record(ctx context.Context, evs []inbound) {
	if stall := r.stall.Load(); stall != nil {
		r.mu.Unlock()
		select {
		case <-*stall:
		case <-ctx.Done():
		}
		r.mu.Lock()
	}
	// Events held back were read before any marker read since: another
	// instance may have appended them (appendAlone).
	repeated := len(r.pending) > 0
	if repeated {
		// Before the new ones: a user's events keep their order.
		var all []inbound
		for _, p := range r.pending {
			all = append(all, p...)
		}
		evs = append(all, evs...)
		clear(r.pending)
	}
	if len(evs) == 0 {
		return
	}
	waitFirst := r.waitFirst()
	now := time.Now()
	users := make(map[string]*userBatch)
	var order []string
	for i, e := range evs {
		ub := users[e.username]
		if ub == nil {
			ub = &userBatch{known: true}
			users[e.username] = ub
			order = append(order, e.username)
		}
		ub.index = append(ub.index, i)
		if e.id != "" {
			// Only its id moves the cursor (history.RecordSource).
			ub.payloads = append(ub.payloads, history.Envelope(e.id, ""))
		} else {
			ub.payloads = append(ub.payloads, e.payload)
		}
		ub.known = ub.known && e.id != ""
	}
	ids := make([]string, len(evs))
	var err error
	if scripted := r.recordKnown(users, order, evs, ids, now); scripted > 0 && (repeated || !r.appendAlone(ctx, users, order, evs)) {
		err = r.recordScripted(ctx, users, order, waitFirst, now)
	}
	r.finish(ctx, evs, users, order, ids, err, now)
}

// recordScripted records the events of the users in order that did not
// all come with their ids, with the record script: one call per group of
// users (recorder.callOf), in one round trip. It fills in each user's
// recorded, or err. mu must be held; it is released during the round trip.
func (r *recorder) recordScripted(ctx context.Context, users map[string]*userBatch, order []string, waitFirst bool, now time.Time) error {
	rctx, cancel := context.WithTimeout(ctx, recordTimeout)
	defer cancel()
	pipe := r.rdb.Pipeline()
	// One call per group of users (recorder.callOf), in the order of
	// their first user.
	calls := make(map[int][]string)
	var callOrder []int
	var recs []history.Recording
	for _, u := range order {
		if users[u].known {
			continue
		}
		c := r.callOf(r.layout.Key(u))
		if _, ok := calls[c]; !ok {
			callOrder = append(callOrder, c)
		}
		calls[c] = append(calls[c], u)
	}
	for _, c := range callOrder {
		evs := make([]history.UserEvents, len(calls[c]))
		for i, u := range calls[c] {
			cur := r.cursor(u)
			if !cur.Entry && waitFirst {
				since, ok := r.waiting[u]
				cur.WaitFirst = !ok || now.Sub(since) < waitFirstMax
			}
			evs[i] = history.UserEvents{Username: u, Cursor: cur, Payloads: users[u].payloads}
		}
		recs = append(recs, r.layout.RecordUsersAs(rctx, pipe, r.retention, r.owner, evs))
	}
	// With the scripts loaded again if Redis restarted or flushed them.
	r.mu.Unlock()
	err := history.ExecScripts(rctx, r.rdb, pipe)
	r.mu.Lock()
	for k, c := range callOrder {
		recorded, rerr := recs[k].Users()
		for i, u := range calls[c] {
			if rerr != nil {
				users[u].err = rerr
				continue
			}
			users[u].recorded = recorded[i]
		}
	}
	return err
}

// appendAlone appends the events of the users in order that did not all
// come with their ids without looking for them first, in one round trip,
// while this instance holds history.SoloKey in the generation whose marker
// it read (soleRecorder). It fills in each user's recorded, or err, and
// reports whether it did: false leaves them to recordScripted. mu must be
// held; it is released during the round trip.
func (r *recorder) appendAlone(ctx context.Context, users map[string]*userBatch, order []string, evs []inbound) bool {
	if r.sole == nil || r.soleFrom == 0 || r.sole.held.Load() != r.soleFrom {
		return false
	}
	var list []history.UserEvents
	for _, u := range order {
		if users[u].known {
			continue
		}
		ue := history.UserEvents{Username: u}
		for _, i := range users[u].index {
			if evs[i].id == "" {
				ue.Payloads = append(ue.Payloads, evs[i].payload)
			}
		}
		list = append(list, ue)
	}
	rctx, cancel := context.WithTimeout(ctx, recordTimeout)
	defer cancel()
	pipe := r.rdb.Pipeline()
	call := r.layout.AppendUsers(rctx, pipe, r.retention, r.owner, list)
	r.mu.Unlock()
	// The call's nil reply (not held) is no failure: IDs reads it.
	_ = history.ExecScripts(rctx, r.rdb, pipe)
	r.mu.Lock()
	appended, held, err := call.IDs()
	if err == nil && !held {
		// Another instance reads events, or Redis lost the key: the
		// lookup until the next generation's marker.
		r.soleFrom = 0
		return false
	}
	for k, ue := range list {
		ub := users[ue.Username]
		if err != nil {
			ub.err = err
			continue
		}
		cur := r.cursor(ue.Username)
		recs := make([]history.Recorded, len(ub.index))
		next := 0
		for j, i := range ub.index {
			if id := evs[i].id; id != "" {
				recs[j] = history.Recorded{ID: id}
			} else {
				recs[j] = history.Recorded{ID: appended[k][next], Appended: true}
				next++
			}
			cur = cur.Known(recs[j].ID)
		}
		ub.recorded = history.UserRecorded{Recorded: recs, Cursor: cur}
	}
	return true
}

// finish gives evs the ids recorded for them (ids already holds those
// that came with theirs), moves this instance's place in each user's
// history, keeps the pending events back, counts and logs the failures,
// and broadcasts the others in order. mu must be held.
func (r *recorder) finish(ctx context.Context, evs []inbound, users map[string]*userBatch, order []string, ids []string, err error, now time.Time) {
	failed, lagging := 0, 0
	var held map[int]bool
	for _, u := range order {
		ub := users[u]
		if ub.known {
			continue
		}
		recs, cur, rerr := ub.recorded.Recorded, ub.recorded.Cursor, ub.err
		if rerr != nil {
			failed += len(ub.index)
			if err == nil {
				err = rerr
			}
			continue
		}
		r.cursors[u] = &userCursor{cur: cur, used: now}
		if len(recs) > 0 && recs[0].Pending {
			if _, ok := r.waiting[u]; !ok {
				r.waiting[u] = now
			}
		} else {
			delete(r.waiting, u)
		}
		for k, i := range ub.index {
			if recs[k].Pending {
				if held == nil {
					held = make(map[int]bool)
				}
				held[i] = true
				r.pending[u] = append(r.pending[u], evs[i])
				continue
			}
			ids[i] = recs[k].ID
			if recs[k].Appended {
				r.stats.HistoryRecorded.Add(1)
			}
			if recs[k].ID == "" {
				lagging++
			}
		}
	}
	if lagging > 0 {
		r.stats.HistoryErrors.Add(uint64(lagging))
		r.errLog.log(r.logger, slog.LevelWarn, "This instance lags more than HISTORY_MAX_LEN events behind for a user; delivering those events without ids",
			"events", lagging, "failed_total", r.stats.HistoryErrors.Load())
	}
	if failed > 0 {
		r.stats.HistoryErrors.Add(uint64(failed))
		if ctx.Err() == nil {
			r.errLog.log(r.logger, slog.LevelWarn, "Recording events in history failed; delivering them without ids",
				"events", failed, "err", err, "failed_total", r.stats.HistoryErrors.Load())
		}
	}
	for i, e := range evs {
		if held[i] {
			continue
		}
		r.broadcast(e.username, newEvent(ids[i], []byte(e.payload), e.received))
		r.stats.MessagesReceived.Add(1)
		if r.queued[e.username]--; r.queued[e.username] <= 0 {
			delete(r.queued, e.username)
		}
	}
}
