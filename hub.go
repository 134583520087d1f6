package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"hash/maphash"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// hubShardCount is the number of independently locked parts of the hub, so
// that connects, disconnects and broadcasts for different users rarely wait
// for one another.
const hubShardCount = 64

// errHubClosed is returned by register once shutdown has begun.
var errHubClosed = errors.New("server shutting down")

// Hub keeps the open connections by username and hands each published
// message to the connections of its user. It never blocks on a connection:
// a client that cannot keep up is disconnected, not waited for.
type Hub struct {
	shards [hubShardCount]hubShard
	seed   maphash.Seed

	settings clientSettings
	logger   *slog.Logger
	stats    *Stats

	// maxConnections and maxPerUser are MAX_CONNECTIONS and
	// MAX_CONNECTIONS_PER_USER (0: no limit).
	maxConnections int64
	maxPerUser     int

	// closing is set when shutdown begins; register refuses from then on.
	closing atomic.Bool
	// connections and users are the current totals, for logs and stats.
	connections atomic.Int64
	users       atomic.Int64
	// slots counts open connections plus reserved ones (upgrades under
	// way), against maxConnections.
	slots atomic.Int64
	// queuedFrames and queuedBytes are what waits in all send queues: the
	// send-queue pressure, readable without walking the connections.
	queuedFrames atomic.Int64
	queuedBytes  atomic.Int64
	// deliveryLatency observes, per frame written, the seconds since the
	// message was read from Redis.
	deliveryLatency observer
	// replayer sends resuming connections their history (nil with
	// HISTORY=off); replays is the context of its catch-ups, cancelled
	// when shutdown begins.
	catchUps    *catchUps
	replays     context.Context
	stopReplays context.CancelFunc
	// watch is told when a user arrives (their first connection is
	// reserved) and leaves (their last one ends), under the user's shard
	// lock: the subscription, which in user mode subscribes their channel.
	watch userWatcher
	// presence is told whenever a user's connection count here changes
	// (PRESENCE), with the user's shard lock held.
	presence presenceTracker
	// receipts takes the acks of this instance's clients (read receipts).
	receipts receiptTracker
	// wg counts, for every client, its read pump and its write side (the
	// holders of its write right, one at a time, until a write pump closes
	// the socket in closeSocket), and broadcast's fan-out goroutines; the
	// hub owns them and shutdown waits for them.
	wg sync.WaitGroup
}

// userWatcher follows which users have connections on this instance.
type userWatcher interface {
	want(username string)
	unwant(username string)
}

// watchNobody is the userWatcher of a hub without a subscription (tests).
type watchNobody struct{}

func (watchNobody) want(string)   {}
func (watchNobody) unwant(string) {}

// message is one published event on its way to the sockets: its bytes,
// shared by every connection of the user and never changed, and when it was
// read from Redis.
type message struct {
	data []byte
	// id is the event id in the user's history ("" with HISTORY=off, or
	// when recording the event failed).
	id string
	// v1 is the frame for connections that chose the fanout.v1
	// subprotocol: {"id":…,"data":<data>}, or a control object as it is.
	v1 []byte
	// event names a control message ("resync") for SSE; "" for an event.
	event    string
	received time.Time
	// prepared and preparedV1, set for a user with at least preparedMin
	// connections, are the frames encoded once for all of them.
	prepared, preparedV1 *websocket.PreparedMessage
	// sse is the event as SSE streams write it, made by the first of them
	// (sseEvent).
	sse atomic.Pointer[[]byte]
}

// newEvent returns the message for a published event with id ("" for
// none).
func newEvent(id string, data []byte, received time.Time) *message {
	v1 := make([]byte, 0, len(data)+len(id)+len(`{"id":"","data":}`))
	if id != "" {
		v1 = append(append(append(v1, `{"id":"`...), id...), `",`...)
	} else {
		v1 = append(v1, '{')
	}
	v1 = append(append(append(v1, `"data":`...), data...), '}')
	return &message{data: data, id: id, v1: v1, received: received}
}

// newControl returns a control message, such as {"control":"resync"},
// for fanout.v1 and SSE connections only.
func newControl(event, reason string) *message {
	b, _ := json.Marshal(struct {
		Control string `json:"control"`
		Reason  string `json:"reason,omitempty"`
	}{event, reason})
	return &message{data: b, v1: b, event: event, received: time.Now()}
}

// preparedMin is the fewest connections for which broadcast encodes the
// frame once (websocket.PreparedMessage) rather than once per connection.
// Measured (BenchmarkPrepareFrame, BenchmarkEncodeFrame, 256 bytes):
// preparing costs 7.3 us and 11.8 KB per event and saves 17 ns and one
// 24-byte allocation per connection, so it pays from about 430 connections.
const preparedMin = 512

// observer takes one observation, such as a latency in seconds; a
// prometheus.Histogram is one.
type observer interface{ Observe(float64) }

// discard is an observer that keeps nothing.
type discard struct{}

func (discard) Observe(float64) {}

// addQueued adds to the hub-wide count of frames and bytes waiting in send
// queues (negative to take away).
func (h *Hub) addQueued(frames, bytes int) {
	h.queuedFrames.Add(int64(frames))
	h.queuedBytes.Add(int64(bytes))
}

// hubShard is one part of the username → connections map.
type hubShard struct {
	// mu guards users and reserved; broadcasts take it for reading.
	mu    sync.RWMutex
	users map[string]map[*Client]struct{}
	// reserved counts, per username, the connections being upgraded.
	reserved map[string]int
}

func newHub(settings clientSettings, logger *slog.Logger, stats *Stats) *Hub {
	h := &Hub{seed: maphash.MakeSeed(), settings: settings, logger: logger, stats: stats, deliveryLatency: discard{}, watch: watchNobody{}, presence: presenceOff{}, receipts: receiptsOff{stats: stats}}
	h.replays, h.stopReplays = context.WithCancel(context.Background())
	for i := range h.shards {
		h.shards[i].users = make(map[string]map[*Client]struct{})
		h.shards[i].reserved = make(map[string]int)
	}
	return h
}

// setLimits sets MAX_CONNECTIONS and MAX_CONNECTIONS_PER_USER (0: none).
func (h *Hub) setLimits(maxConnections, maxPerUser int) {
	h.maxConnections = int64(maxConnections)
	h.maxPerUser = maxPerUser
}

// reserve claims a connection slot for username before the WebSocket
// upgrade, so that a request over a limit gets an HTTP answer. A reserved
// slot ends in register (which uses it) or release.
func (h *Hub) reserve(username string) error {
	s := h.shard(username)
	s.mu.Lock()
	defer s.mu.Unlock()
	if h.closing.Load() {
		return errHubClosed
	}
	if h.maxPerUser > 0 && len(s.users[username])+s.reserved[username] >= h.maxPerUser {
		return errUserLimit
	}
	if n := h.slots.Add(1); h.maxConnections > 0 && n > h.maxConnections {
		h.slots.Add(-1)
		return errInstanceLimit
	}
	if len(s.users[username])+s.reserved[username] == 0 {
		h.watch.want(username)
	}
	s.reserved[username]++
	return nil
}

// release gives back a slot reserved for username whose upgrade failed.
func (h *Hub) release(username string) {
	s := h.shard(username)
	s.mu.Lock()
	h.unreserve(s, username)
	h.leftIfGone(s, username)
	s.mu.Unlock()
	h.slots.Add(-1)
}

// leftIfGone tells the watcher that username left when they have no
// connection or reservation any more; s.mu must be held.
func (h *Hub) leftIfGone(s *hubShard, username string) {
	if len(s.users[username]) == 0 && s.reserved[username] == 0 {
		h.watch.unwant(username)
	}
}

// unreserve drops one reservation of username; s.mu must be held.
func (*Hub) unreserve(s *hubShard, username string) {
	if s.reserved[username] <= 1 {
		delete(s.reserved, username)
		return
	}
	s.reserved[username]--
}

func (h *Hub) shard(username string) *hubShard {
	return &h.shards[maphash.String(h.seed, username)%hubShardCount]
}

// register adds c, whose slot was reserved, to the hub and starts its
// read pump, and its catch-up when req asks for history. It fails once
// shutdown has begun, and the slot is then released.
func (h *Hub) register(c *wsClient, req replayRequest) error {
	if err := h.addAndCatchUp(&c.Client, req); err != nil {
		return err
	}
	go c.readPump()
	return nil
}

// addAndCatchUp adds c (add) and starts its catch-up when req asks for
// history: live events are held from the moment c is in the map, so none
// falls between the history and them. The caller starts the read side.
func (h *Hub) addAndCatchUp(c *Client, req replayRequest) error {
	wanted := req.wanted() && h.catchUps != nil
	if wanted {
		c.catchUp = &catchUp{}
	}
	if err := h.add(c); err != nil {
		return err
	}
	if !c.expires.IsZero() {
		c.expiry = time.AfterFunc(time.Until(c.expires), c.tokenExpired)
	}
	if wanted {
		h.wg.Go(func() { h.catchUps.run(h.replays, c, req) })
	}
	return nil
}

// catchUpAfterLoss catches username's connections up on the history after
// a lost subscription: Redis may have taken events for them while it was
// gone, which the history holds. It is called once the subscription is
// back, before any event it delivers is broadcast, so none of those gets
// ahead of the ones the history gives. Without history it does nothing.
func (h *Hub) catchUpAfterLoss(username string) {
	if h.catchUps == nil {
		return
	}
	s := h.shard(username)
	s.mu.RLock()
	defer s.mu.RUnlock()
	for c := range s.users[username] {
		h.catchUpClientAfterLoss(c)
	}
}

// catchUpEveryoneAfterLoss is catchUpAfterLoss for every user connected
// here: a whole subscription was lost (pattern mode, or every channel of a
// session).
func (h *Hub) catchUpEveryoneAfterLoss() {
	if h.catchUps == nil {
		return
	}
	h.walk(h.catchUpClientAfterLoss)
}

// catchUpClientAfterLoss starts c's catch-up after a lost subscription
// when c was sent an event with an id: c holds its live events from now
// on, reads the history after that event, and goes on live (as a resuming
// connection does); a connection in a catch-up already is left to it. c's
// shard lock is held, for reading.
func (h *Hub) catchUpClientAfterLoss(c *Client) {
	if h.closing.Load() {
		return
	}
	c.mu.Lock()
	from := ""
	if c.closing == nil && c.lastID != "" && (c.catchUp == nil || c.catchUp.done) {
		c.catchUp, from = &catchUp{}, c.lastID
	}
	c.mu.Unlock()
	if from != "" {
		h.stats.ResubscribeCatchups.Add(1)
		// c is in the map, so its sides hold the WaitGroup.
		h.wg.Go(func() { h.catchUps.run(h.replays, c, replayRequest{resume: true, lastEventID: from}) })
	}
}

// walkUsers calls visit for every user with connections here, one shard
// at a time under its read lock: the one walk of the hub's map. visit may
// take a client's mu (the lock order) and must not take a shard lock, nor
// keep conns.
func (h *Hub) walkUsers(visit func(username string, conns map[*Client]struct{})) {
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.RLock()
		for username, conns := range s.users {
			visit(username, conns)
		}
		s.mu.RUnlock()
	}
}

// walk calls visit for every connection (walkUsers).
func (h *Hub) walk(visit func(c *Client)) {
	h.walkUsers(func(_ string, conns map[*Client]struct{}) {
		for c := range conns {
			visit(c)
		}
	})
}

// all returns every connection.
func (h *Hub) all() []*Client {
	var all []*Client
	h.walk(func(c *Client) { all = append(all, c) })
	return all
}

// add turns the slot reserved for c into an entry in the username map and
// counts its read pump and its write side, which the caller must start.
func (h *Hub) add(c *Client) error {
	s := h.shard(c.username)
	s.mu.Lock()
	h.unreserve(s, c.username)
	// Checked under the shard lock: shutdown sets closing before it walks
	// the shards, so it either sees c or register sees closing.
	if h.closing.Load() {
		h.leftIfGone(s, c.username)
		s.mu.Unlock()
		h.slots.Add(-1)
		return errHubClosed
	}
	conns := s.users[c.username]
	if conns == nil {
		conns = make(map[*Client]struct{}, 1)
		s.users[c.username] = conns
		h.users.Add(1)
	}
	c.pingAt = time.Now().Add(c.t.pingEvery()).UnixNano()
	conns[c] = struct{}{}
	h.presence.changed(c.username)
	h.connections.Add(1)
	// Counted here, with connections, so that no reader sees more open
	// connections than accepted ones.
	h.stats.ConnectionsAccepted.Add(1)
	h.wg.Add(2)
	s.mu.Unlock()
	return nil
}

// unregister removes c and returns how many connections its user has left.
func (h *Hub) unregister(c *Client) int {
	s := h.shard(c.username)
	s.mu.Lock()
	defer s.mu.Unlock()
	conns := s.users[c.username]
	if _, ok := conns[c]; !ok {
		return len(conns)
	}
	delete(conns, c)
	h.presence.changed(c.username)
	h.connections.Add(-1)
	h.slots.Add(-1)
	if len(conns) == 0 {
		delete(s.users, c.username)
		h.users.Add(-1)
		h.leftIfGone(s, c.username)
	}
	return len(conns)
}

// broadcast hands msg to every connection of username and returns how many
// took it. msg is shared by those connections and must not be changed.
//
// A connection whose write right is held (a write pump runs, or another
// broadcast's direct write) gets msg on its queue. An idle one is claimed
// (broadcast takes its write right, writeDirect), and its frame is written with
// transport.writeNow, which never waits for the socket, rather than by a
// write pump started for it: no goroutine to start and schedule per
// delivery. For a user with at most writeNowMax connections broadcast
// writes them itself, once the shard lock is released; a larger fan-out is
// split over one goroutine per CPU that broadcast does not wait for, so
// the events that follow queue up behind it and go out in batches.
func (h *Hub) broadcast(username string, msg *message) int {
	s := h.shard(username)
	queued, dropped, held := 0, 0, 0
	var few [writeNowMax]*Client
	claimed := few[:0]
	s.mu.RLock()
	conns := s.users[username]
	if len(conns) > writeNowMax {
		claimed = make([]*Client, 0, len(conns))
	}
	if len(conns) >= preparedMin {
		if pm, err := websocket.NewPreparedMessage(websocket.TextMessage, msg.data); err == nil {
			msg.prepared = pm
		}
		if pm, err := websocket.NewPreparedMessage(websocket.TextMessage, msg.v1); err == nil {
			msg.preparedV1 = pm
		}
	}
	// Every connection is counted in the send-queue pressure before the
	// loop, and those that did not queue msg are taken off after it: a
	// write pump may take msg off its queue (and off the count) before the
	// loop ends, and the gauges must never read below zero. Twice per
	// broadcast, not per connection: they are shared counters.
	if len(conns) > 0 {
		h.addQueued(len(conns), len(conns)*len(msg.data))
	}
	for c := range conns {
		switch c.enqueue(msg, true) {
		case enqueued:
			queued++
		case enqueueClaimed:
			claimed = append(claimed, c)
		case enqueueHeld:
			held++
		default:
			dropped++
		}
	}
	notQueued := len(conns) - queued
	s.mu.RUnlock()
	if notQueued > 0 {
		h.addQueued(-notQueued, -notQueued*len(msg.data))
	}
	if dropped > 0 {
		h.stats.FramesDropped.Add(uint64(dropped))
	}
	if len(claimed) <= writeNowMax {
		for _, c := range claimed {
			c.t.writeNow(msg)
		}
		return queued + held + len(claimed)
	}
	// Counted in wg like the pumps: each claimed connection holds a count
	// of its own until then, so the count cannot be zero here.
	parts := runtime.GOMAXPROCS(0)
	per := (len(claimed) + parts - 1) / parts
	for i := 0; i < len(claimed); i += per {
		part := claimed[i:min(i+per, len(claimed))]
		h.wg.Go(func() {
			for _, c := range part {
				c.t.writeNow(msg)
			}
		})
	}
	return queued + held + len(claimed)
}

// writeNowMax is the most connections a user may have for broadcast to
// write their frames itself rather than on fan-out goroutines.
const writeNowMax = 4

// pingTick is how often the pinger looks for due pings: often enough that
// a ping is never late by more than half the margin between PING_INTERVAL
// and PONG_WAIT, and at most a quarter of PING_INTERVAL.
func pingTick(pingInterval, pongWait time.Duration) time.Duration {
	return max(min((pongWait-pingInterval)/2, pingInterval/4), time.Millisecond)
}

// runPinger asks every connection for a ping (a heartbeat on SSE) once
// per its transport's pingEvery until ctx ends: one goroutine and no timer
// per connection. Every pingTick it walks the connections and asks those
// whose ping is due.
func (h *Hub) runPinger(ctx context.Context) {
	ticker := time.NewTicker(min(pingTick(h.settings.pingInterval, h.settings.pongWait), sseHeartbeat/4))
	defer ticker.Stop()
	var due []*Client
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		now := time.Now().UnixNano()
		h.walk(func(c *Client) {
			if c.pingAt <= now {
				c.pingAt = now + int64(c.t.pingEvery())
				due = append(due, c)
			}
		})
		for _, c := range due {
			c.requestPing()
		}
		clear(due)
		due = due[:0]
	}
}

// catchups returns the number of connections catching up on their
// history (0 with HISTORY=off).
func (h *Hub) catchups() int64 {
	if h.catchUps == nil {
		return 0
	}
	return h.catchUps.active.Load()
}

// topUsers returns the users with the most connections, most first. It
// locks one hub shard at a time, briefly, and counts users, not connections.
func (h *Hub) topUsers(n int) []userConnections {
	// Never nil: /admin/stats shows no users as [], not null.
	top := make([]userConnections, 0, max(h.users.Load(), 0))
	h.walkUsers(func(name string, conns map[*Client]struct{}) {
		top = append(top, userConnections{Username: name, Connections: len(conns)})
	})
	slices.SortFunc(top, func(a, b userConnections) int {
		return cmp.Or(cmp.Compare(b.Connections, a.Connections), strings.Compare(a.Username, b.Username))
	})
	return top[:min(n, len(top))]
}

// connectionCount returns the number of open connections of username.
func (h *Hub) connectionCount(username string) int {
	s := h.shard(username)
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.users[username])
}

// shutdown refuses new connections, sends every client a going-away close
// frame after its queued messages, and waits for all pumps to end. When ctx
// ends first, the remaining sockets are closed outright.
func (h *Hub) shutdown(ctx context.Context) error {
	h.closing.Store(true)
	h.stopReplays()
	all := h.all()
	for _, c := range all {
		c.disconnect(disconnectShutdown)
	}

	done := make(chan struct{})
	go func() {
		h.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		for _, c := range all {
			// Unblocks a write side stuck on a client that does not read.
			c.t.abort()
		}
		<-done
		return ctx.Err()
	}
}
