package main

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
	"fanout/internal/redisx"
)

const (
	// channelPrefix is the seed's channel convention, workflow:events:{username},
	// which the history package owns.
	channelPrefix = history.ChannelPrefix
	// channelPattern is what the daemon subscribes to in pattern mode.
	channelPattern = channelPrefix + "*"
	// probePrefix starts the channels of the self-probes. It holds ':', which
	// no username may contain, so a probe never reaches a user.
	probePrefix = channelPrefix + "_fanout:probe:"
	// receivePoll bounds each blocking read of the subscription so the loop
	// notices shutdown and resubscribe requests.
	receivePoll = time.Second
	// retryMin is the first delay after a failed subscription.
	retryMin = 100 * time.Millisecond
)

// What /ready says while Redis fails: unreachable until a first
// subscription succeeded, lost after. It is public, so it names no
// address; the daemon's log has the error.
const (
	notReadyUnreachable = "redis unreachable; retrying (the daemon's log says why)"
	notReadyLost        = "redis subscription lost; retrying (the daemon's log says why)"
)

// errProbeOverdue ends a subscription that stopped delivering silently.
var errProbeOverdue = errors.New("self-probe did not come back: subscription stopped delivering")

// How data flows, and where it flows back
//
// An event flows one way: Redis → pubsubConn → eventSink (the recorder
// gives it an id, one Redis round trip per batch, or takes the id its
// envelope carries) → Hub.broadcast →
// Client → its transport → the browser. Packages depend one way too: main
// → the root files → history and internal/* → go-redis. Four edges run
// against that direction; each is here on purpose:
//
//   - Hub → subscription (want, unwant), under the user's shard lock: user
//     mode subscribes the channels of the users connected here. want and
//     unwant only mark the user's channel and wake the flusher; no Redis
//     command runs under the hub's lock (userChannels.flush sends them).
//   - pubsubConn → Hub.catchUpAfterLoss → catchUps → Redis: when a lost
//     subscription is back, the open connections read the history of what
//     Redis took meanwhile, before any event of the new subscription is
//     broadcast (the order is the reason it is called from the read loop).
//     The reads run on the hub's goroutines, not the subscription's.
//   - Instance → the recorder lease holder → instance (the sync/ack
//     markers on the probe channel, syncPrefix): a catch-up in user mode
//     reads the history only once the holder recorded every event
//     published before the user's channel was subscribed here.
//   - recorder.waitFirst → recorderLease.recording: a user's first events
//     after a new subscription wait for the holder's ids rather than be
//     appended ahead of events it has still to record.

// subscription is how this instance hears its users' events in Redis. There
// is one implementation per deployment, chosen once at start-up by
// newSubscription; the rest of the daemon never asks which it has:
//
//	patternSubscription  SUBSCRIBE_MODE=pattern: one PSUBSCRIBE workflow:events:*
//	userSubscription     SUBSCRIBE_MODE=user: a SUBSCRIBE (SSUBSCRIBE with
//	                     PUBSUB_SHARDED on one Redis) per connected user
//	clusterSubscription  PUBSUB_SHARDED on a Redis Cluster: one user
//	                     subscription per master, each user's channel on the
//	                     master of its slot
//
// Each runs one or more pubsubConn, the Redis connection loop they share,
// and hands what it reads to an eventSink: the recorder (HISTORY on), which
// gives each event its id before the hub broadcasts it, or straight to the
// hub (HISTORY off).
type subscription interface {
	// run subscribes until ctx ends, retrying after every failure; it
	// owns every goroutine it starts and waits for them.
	run(ctx context.Context)
	// ready reports whether the subscription is live, or why not (/ready).
	ready() (bool, string)
	// status is the subscription's state for /admin/stats and /metrics.
	status() subscriptionStatus
	// want and unwant follow which users have connections here: the hub
	// calls them with the user's shard lock held (userWatcher).
	userWatcher
	// wait holds a new connection back until Redis has confirmed its
	// user's channel, so that no event falls between the two.
	wait(ctx context.Context, username string) error
	// waitSynced returns once the history holds every event published
	// before username's channel was subscribed here: a catch-up reads it
	// then (user mode with the recorder lease; at once elsewhere).
	waitSynced(ctx context.Context, username string)
	// startAttrs are what the "Starting fanout" line says of it.
	startAttrs() []any
}

// subscriptionStatus is what /admin/stats and /metrics show of a
// subscription.
type subscriptionStatus struct {
	// confirmed is true while Redis has confirmed every connection of it.
	confirmed bool
	// lastReceived is when it last read anything (UnixNano; 0: never).
	lastReceived int64
	// channels is the number of user channels Redis holds for it.
	channels int
	// recorderLease, in user mode with history on, is true while this
	// instance holds the recorder lease; recorderReceived counts the
	// events its recording subscription read.
	recorderLease    bool
	recorderReceived uint64
	// soleRecorder, in pattern mode with history on one Redis, is true
	// while this instance holds history.SoloKey: no other instance reads
	// events, and it appends them without looking them up.
	soleRecorder bool
}

// subscriptionParts is what a subscription is built from.
type subscriptionParts struct {
	// id names this instance: in its probe channels and the lease.
	id string
	// rdb is the daemon's client; recordRdb the recorder's (HISTORY on).
	rdb, recordRdb redis.UniversalClient
	// opts are the data nodes' settings, for a cluster node's own client.
	opts   redis.Options
	hub    *Hub
	cfg    Config
	logger *slog.Logger
	stats  *Stats
}

// newSubscription returns the subscription of p.cfg's deployment, and the
// recorder it feeds (nil with HISTORY=off).
func newSubscription(p subscriptionParts) subscription {
	var sink eventSink = directSink{deliver: deliverTo(p.hub, p.logger), stats: p.stats}
	var rec *recorder
	if p.cfg.History {
		rec = newRecorder(p.recordRdb, p.id, history.Layout{Sharded: p.cfg.PubSubSharded}, p.cfg.Retention, deliverTo(p.hub, p.logger), p.stats, p.logger)
		sink = rec
	}
	cluster, onCluster := p.rdb.(*redis.ClusterClient)
	switch {
	case p.cfg.PubSubSharded && onCluster:
		return newClusterSubscription(p, cluster, sink)
	case p.cfg.SubscribeMode == subscribeUser:
		return newUserSubscription(p, sink, rec)
	default:
		return newPatternSubscription(p, sink, rec, onCluster)
	}
}

// newInstanceID returns a random name for this process's probe channel.
func newInstanceID() string {
	b := make([]byte, 8)
	_, _ = crand.Read(b)
	return hex.EncodeToString(b)
}

// deliverTo returns the function that hands an event to username's
// connections on hub.
func deliverTo(hub *Hub, logger *slog.Logger) func(username string, msg *message) {
	return func(username string, msg *message) {
		n := hub.broadcast(username, msg)
		if logger.Enabled(context.Background(), slog.LevelDebug) {
			logger.Debug("Broadcasting to username", "username", username, "client_count", n)
		}
	}
}

// eventSink takes, in order, what a pubsubConn reads: valid events, resets
// (a new subscription may have missed events) and the markers it answers.
type eventSink interface {
	// add takes in, waiting while the sink is full; it reports false when
	// ctx ended first.
	add(ctx context.Context, in inbound) bool
	// records reports whether it records: resets then need Redis's clock.
	records() bool
	// run does the sink's work until ctx ends; its subscription runs it.
	run(ctx context.Context)
}

// directSink, with HISTORY=off, broadcasts each event as it is read.
type directSink struct {
	deliver func(username string, msg *message)
	stats   *Stats
}

func (d directSink) add(_ context.Context, in inbound) bool {
	if in.username != "" && !in.reset {
		d.deliver(in.username, newEvent("", []byte(in.payload), in.received))
		d.stats.MessagesReceived.Add(1)
	}
	return true
}

func (directSink) records() bool       { return false }
func (directSink) run(context.Context) {}

// patternSubscription is SUBSCRIBE_MODE=pattern: one PSUBSCRIBE of
// workflow:events:*, which reads every user's events.
type patternSubscription struct {
	conn *pubsubConn
	sink eventSink
	// sole, with history on one Redis, lets the recorder append alone
	// while no other instance reads events (soleRecorder); nil otherwise.
	sole *soleRecorder
}

// newPatternSubscription feeds sink; rec is the recorder (nil with
// HISTORY=off), which appends alone where it can: on one Redis, not a
// Cluster.
func newPatternSubscription(p subscriptionParts, sink eventSink, rec *recorder, onCluster bool) *patternSubscription {
	// Once the pattern is back after a lost session, Redis may have taken
	// events meanwhile, which the history holds.
	mode := patternChannels{afterLoss: p.hub.catchUpEveryoneAfterLoss}
	s := &patternSubscription{conn: newPubsubConn(p.id, p.rdb, mode, sink, p.cfg, p.logger, p.stats), sink: sink}
	if rec != nil && !onCluster {
		s.sole = newSoleRecorder(p.rdb, p.id, p.opts.ClientName, s.conn, p.logger)
		rec.sole = s.sole
	}
	return s
}

func (s *patternSubscription) run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.sink.run(ctx) })
	if s.sole != nil {
		wg.Go(func() { s.sole.run(ctx) })
	}
	s.conn.run(ctx)
}

func (s *patternSubscription) ready() (bool, string) { return s.conn.ready() }
func (s *patternSubscription) status() subscriptionStatus {
	st := subscriptionStatus{confirmed: s.conn.confirmed.Load(), lastReceived: s.conn.lastReceived.Load()}
	if s.sole != nil {
		st.soleRecorder = s.sole.held.Load() != 0
	}
	return st
}
func (*patternSubscription) want(string)                        {}
func (*patternSubscription) unwant(string)                      {}
func (*patternSubscription) wait(context.Context, string) error { return nil }
func (*patternSubscription) waitSynced(context.Context, string) {}
func (*patternSubscription) startAttrs() []any                  { return []any{"pattern", channelPattern} }

// channelMode is what a pubsubConn subscribes, and what it does with
// Redis's confirmations: the pattern (patternChannels) or the users'
// channels (userChannelMode).
type channelMode interface {
	// open starts a session's subscription.
	open(ctx context.Context, c *pubsubConn) *redis.PubSub
	// confirms reports whether m is Redis's confirmation of the session
	// itself.
	confirms(m *redis.Subscription, c *pubsubConn) bool
	// begin runs once Redis confirmed a session, before the daemon reads
	// it ready; lost says an earlier session was confirmed, so events may
	// have been missed meanwhile. It returns the session's own work (run
	// until the session ends; an error ends the session), or nil.
	begin(c *pubsubConn, pubsub *redis.PubSub, lost bool) func(ctx context.Context) error
	// other takes Redis's answer about a channel other than the session's
	// own; it reports false when ctx ended.
	other(ctx context.Context, c *pubsubConn, m *redis.Subscription) bool
	// moved takes an error reply that leaves the connection usable (a
	// cluster node's MOVED), and reports whether err was one.
	moved(err error) bool
	// acked takes the recorder lease holder's answer to marker n.
	acked(n uint64)
	// resetsAll reports whether a new session forgets every user's place
	// in history: not a cluster node's, whose recorder the other nodes'
	// sessions share (its users' places are reset as their channels are
	// subscribed).
	resetsAll() bool
	// logAttrs are what the "Subscribed to Redis" line says of it.
	logAttrs(c *pubsubConn) []any
}

// patternChannels is the channelMode of a PSUBSCRIBE of workflow:events:*.
type patternChannels struct {
	// afterLoss runs when the pattern is back after a lost session.
	afterLoss func()
}

func (patternChannels) open(ctx context.Context, c *pubsubConn) *redis.PubSub {
	return c.client.PSubscribe(ctx, channelPattern)
}

func (patternChannels) confirms(m *redis.Subscription, _ *pubsubConn) bool {
	return m.Kind == "psubscribe" && m.Channel == channelPattern
}

func (p patternChannels) begin(_ *pubsubConn, _ *redis.PubSub, lost bool) func(context.Context) error {
	if lost {
		p.afterLoss()
	}
	return nil
}

func (patternChannels) other(context.Context, *pubsubConn, *redis.Subscription) bool { return true }
func (patternChannels) moved(error) bool                                             { return false }
func (patternChannels) acked(uint64)                                                 {}
func (patternChannels) resetsAll() bool                                              { return true }
func (patternChannels) logAttrs(*pubsubConn) []any                                   { return []any{"pattern", channelPattern} }

// pubsubConn is one Redis pub/sub connection, renewed with capped,
// jittered backoff after every failure, and checked by a self-probe: what
// every subscription runs. It reads the subscription itself rather than
// through go-redis's Channel(), whose buffer drops messages once it sits
// full: here nothing is buffered between Redis and the sink, and the hub
// never blocks. What it subscribes is its channelMode; where the events go
// its eventSink.
type pubsubConn struct {
	// client is the Redis the connection reads: the daemon's, or one
	// cluster node's. Its probes and Redis's clock come from it too.
	client redis.UniversalClient
	mode   channelMode
	sink   eventSink
	cfg    Config
	logger *slog.Logger
	stats  *Stats

	// probeChannel is this connection's own probe channel.
	probeChannel string
	// notReady is nil while the subscription is confirmed and probes come
	// back; otherwise it holds the reason /ready reports.
	notReady atomic.Pointer[string]
	// confirmed is true from the session's confirmation until it ends.
	confirmed atomic.Bool
	// probePending is when the oldest probe not yet back was published
	// (UnixNano), or 0 when none is outstanding.
	probePending atomic.Int64
	// lastReceived is when the session last read anything (UnixNano).
	lastReceived atomic.Int64
	// inSink is true while the session waits for the sink to take what it
	// read: the daemon is busy (the recorder broadcasting a large batch),
	// and Redis is not to blame for the silence meanwhile.
	inSink atomic.Bool
	// resubscribe carries the prober's request to drop the session.
	resubscribe wakeup

	invalidLog *logLimiter

	// answersMarkers is set on the recorder lease holder's recording
	// subscription: it answers other instances' markers (userChannels).
	answersMarkers bool
	// onConfirmed runs each time Redis confirms a session; onFailure after
	// each failed one.
	onConfirmed func(ctx context.Context)
	onFailure   func()

	// addr names the Redis the session reads, for the logs.
	addr string
	// wasConfirmed is set once Redis confirmed a session: a later one
	// follows a lost subscription. Owned by run.
	wasConfirmed bool
}

// newPubsubConn returns the connection loop of instance id on client.
func newPubsubConn(id string, client redis.UniversalClient, mode channelMode, sink eventSink, cfg Config, logger *slog.Logger, stats *Stats) *pubsubConn {
	s := &pubsubConn{
		client:       client,
		mode:         mode,
		sink:         sink,
		cfg:          cfg,
		logger:       logger,
		stats:        stats,
		probeChannel: probePrefix + id,
		resubscribe:  newWakeup(),
		invalidLog:   newLogLimiter(1, 5),
		addr:         redisTarget(cfg),
		onConfirmed:  func(context.Context) {},
		onFailure:    func() {},
	}
	s.setNotReady("waiting for the Redis subscription")
	return s
}

// ready reports whether the subscription is live, or why not.
func (s *pubsubConn) ready() (bool, string) {
	if reason := s.notReady.Load(); reason != nil {
		return false, *reason
	}
	return true, ""
}

func (s *pubsubConn) setNotReady(reason string) { s.notReady.Store(&reason) }

// run subscribes until ctx ends, reconnecting with capped, jittered backoff
// after every failure. It owns the prober goroutine and waits for it; the
// sink is its subscription's to run.
func (s *pubsubConn) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { s.probe(ctx) })
	defer wg.Wait()

	backoff := redisx.Backoff{Min: retryMin, Max: s.cfg.RedisRetryMax}
	for ctx.Err() == nil {
		confirmed, err := s.session(ctx)
		if ctx.Err() != nil {
			return
		}
		s.stats.RedisFailures.Add(1)
		s.onFailure()
		// /ready is public: the reason names no address; the log has the error.
		if s.wasConfirmed {
			s.setNotReady(notReadyLost)
		} else {
			s.setNotReady(notReadyUnreachable)
		}
		if confirmed {
			backoff.Reset()
		}
		wait := backoff.Next()
		s.logger.Warn("Redis subscription failed; retrying", "addr", s.addr, "err", err, "retry_in", wait.Round(time.Millisecond))
		if !redisx.Sleep(ctx, wait) {
			return
		}
	}
}

// session runs one subscription until it fails, the prober asks for a new
// one, or ctx ends. confirmed reports whether Redis confirmed it.
func (s *pubsubConn) session(ctx context.Context) (confirmed bool, err error) {
	// Where this instance's place in every user's history begins: Redis's
	// clock before the subscription (history.RecordSource).
	since, err := s.clock(ctx)
	if err != nil {
		return false, err
	}
	pubsub := s.mode.open(ctx, s)
	defer pubsub.Close()
	// The mode's own work (user mode's flusher) ends with the session.
	workCtx, stopWork := context.WithCancel(ctx)
	var worker sync.WaitGroup
	defer worker.Wait()
	defer stopWork()
	workErr := make(chan error, 1)
	// Closing the connection ends a blocked read at once on shutdown.
	stopClose := context.AfterFunc(ctx, func() { _ = pubsub.Close() })
	defer stopClose()
	defer s.confirmed.Store(false)
	// Drop a request aimed at the previous session.
	s.resubscribe.clear()

	for ctx.Err() == nil {
		select {
		case <-s.resubscribe:
			return confirmed, errProbeOverdue
		case err := <-workErr:
			return confirmed, err
		default:
		}
		msg, err := pubsub.ReceiveTimeout(ctx, receivePoll)
		if err != nil {
			// An idle confirmed subscription times out between messages;
			// before the confirmation a timeout means Redis is not answering.
			var netErr net.Error
			if confirmed && errors.As(err, &netErr) && netErr.Timeout() {
				continue
			}
			if confirmed && s.mode.moved(err) {
				continue
			}
			return confirmed, fmt.Errorf("receive from %s: %w", s.addr, err)
		}
		s.lastReceived.Store(time.Now().UnixNano())
		switch m := msg.(type) {
		case *redis.Subscription:
			if !s.mode.confirms(m, s) {
				if !s.mode.other(ctx, s, m) {
					return confirmed, ctx.Err()
				}
				continue
			}
			confirmed = true
			s.probePending.Store(0)
			if s.mode.resetsAll() {
				// Messages may have been missed since the last session:
				// every user's place in history is lost.
				if !s.sink.add(ctx, inbound{reset: true, since: since}) {
					return confirmed, ctx.Err()
				}
			}
			work := s.mode.begin(s, pubsub, s.wasConfirmed)
			s.wasConfirmed = true
			if work != nil {
				worker.Go(func() {
					if err := work(workCtx); err != nil && workCtx.Err() == nil {
						workErr <- err
					}
				})
			}
			s.confirmed.Store(true)
			s.notReady.Store(nil)
			s.onConfirmed(ctx)
			s.logger.Info("Subscribed to Redis", append([]any{"addr", s.addr}, s.mode.logAttrs(s)...)...)
		case *redis.Message:
			s.inSink.Store(true)
			s.handle(ctx, m.Channel, m.Payload)
			s.inSink.Store(false)
			s.lastReceived.Store(time.Now().UnixNano())
		}
	}
	return confirmed, ctx.Err()
}

// The payloads of the markers that sync a user mode instance's new
// subscriptions with the recorder lease holder, on the instance's probe
// channel, and of the holder's answers (userChannels). This is the one
// exchange between instances, and the one place where data flows back
// against the daemon's direction (hub → subscription → Redis): an
// instance's catch-up must not read a user's history before the lease
// holder has recorded every event published before the user's channel
// was subscribed here (userChannels.waitSynced).
const (
	syncPrefix = "sync:"
	ackPrefix  = "ack:"
)

// mark publishes the marker of SUBSCRIBE batch n on the probe channel.
func (s *pubsubConn) mark(ctx context.Context, n uint64) error {
	tctx, cancel := context.WithTimeout(ctx, s.cfg.ProbeTimeout)
	defer cancel()
	if err := s.client.Publish(tctx, s.probeChannel, syncPrefix+strconv.FormatUint(n, 10)).Err(); err != nil {
		return fmt.Errorf("publish a subscription marker: %w", err)
	}
	return nil
}

// clock returns Redis's time, for the recorder's horizon; without a
// recorder it is not needed and not read.
func (s *pubsubConn) clock(ctx context.Context) (time.Time, error) {
	if !s.sink.records() {
		return time.Time{}, nil
	}
	tctx, cancel := context.WithTimeout(ctx, s.cfg.ProbeTimeout)
	defer cancel()
	// A cluster node's clock is that of the node holding its users'
	// histories.
	t, err := s.client.Time(tctx).Result()
	if err != nil {
		return t, fmt.Errorf("read the Redis clock: %w", err)
	}
	return t, nil
}

// handle validates one published payload and hands it to the sink, which
// broadcasts it to its user (with HISTORY on, once it has its id).
func (s *pubsubConn) handle(ctx context.Context, channel, payload string) {
	if strings.HasPrefix(channel, probePrefix) {
		if channel == s.probeChannel {
			// Redis keeps publish order, so every earlier probe is back too.
			s.probePending.Store(0)
			if n, ok := strings.CutPrefix(payload, ackPrefix); ok {
				if seq, err := strconv.ParseUint(n, 10, 64); err == nil {
					s.mode.acked(seq)
				}
			}
			if n, ok := strings.CutPrefix(payload, solePrefix); ok {
				// The sole recorder's marker (soleRecorder): the events
				// read from here on were published while no other
				// instance read events.
				if gen, err := strconv.ParseUint(n, 10, 64); err == nil {
					s.sink.add(ctx, inbound{sole: gen})
				}
			}
			return
		}
		if n, ok := strings.CutPrefix(payload, syncPrefix); ok && s.answersMarkers {
			// Another instance's marker (userChannels): answered once every
			// event read before it is recorded.
			s.sink.add(ctx, inbound{ack: channel, payload: ackPrefix + n})
		}
		return // another instance's probe
	}
	username := strings.TrimPrefix(channel, channelPrefix)
	// A publish script's envelope carries the event's id (history.Envelope).
	id, data, enveloped := history.OpenEnvelope(payload)
	if enveloped {
		payload = data
	}
	if !s.valid(channel, payload) {
		s.stats.MessagesReceived.Add(1)
		return
	}
	// Counted as received once broadcast.
	s.sink.add(ctx, inbound{username: username, payload: payload, id: id, received: time.Now()})
}

// valid reports whether payload is to be forwarded, and counts and logs
// (rate-limited) one that is not.
func (s *pubsubConn) valid(channel, payload string) bool {
	switch {
	case len(payload) > s.cfg.MaxMessageBytes:
		s.stats.MessagesTooLarge.Add(1)
		s.invalidLog.log(s.logger, slog.LevelWarn, "Dropped published message: larger than MAX_MESSAGE_BYTES",
			"channel", channel, "bytes", len(payload), "max_bytes", s.cfg.MaxMessageBytes, "dropped_total", s.stats.MessagesTooLarge.Load())
		return false
	case len(payload) == 0:
		s.stats.MessagesInvalid.Add(1)
		s.invalidLog.log(s.logger, slog.LevelWarn, "Dropped published message: empty payload",
			"channel", channel, "dropped_total", s.stats.MessagesInvalid.Load())
		return false
	case history.IsEnvelope(payload):
		// Still an envelope once opened, or one whose id is not an id.
		s.stats.MessagesInvalid.Add(1)
		s.invalidLog.log(s.logger, slog.LevelWarn, "Dropped published message: a malformed envelope ('#', an event id, a space, the JSON payload)",
			"channel", channel, "bytes", len(payload), "dropped_total", s.stats.MessagesInvalid.Load())
		return false
	case !json.Valid([]byte(payload)):
		s.stats.MessagesInvalid.Add(1)
		s.invalidLog.log(s.logger, slog.LevelWarn, "Dropped published message: not valid JSON",
			"channel", channel, "bytes", len(payload), "dropped_total", s.stats.MessagesInvalid.Load())
		return false
	}
	return true
}

// probe publishes to this instance's probe channel every ProbeInterval.
// When a published probe has not come back within ProbeTimeout while the
// subscription claims to be live, it marks the daemon not ready and asks
// for a new subscription: pub/sub connections can stop delivering after a
// failover while every health check stays green. A probe that cannot be
// published proves nothing about the subscription and is only logged.
func (s *pubsubConn) probe(ctx context.Context) {
	ticker := time.NewTicker(s.cfg.ProbeInterval)
	defer ticker.Stop()
	var seq uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		if !s.confirmed.Load() {
			continue // the session is failing already; run is retrying it
		}
		now := time.Now()
		if pending := s.probePending.Load(); pending != 0 {
			// A subscription still delivering other messages is alive: the
			// probe is queued behind them. So is one whose messages wait
			// for the daemon: the session is handing one to the sink
			// (inSink), or was until a moment ago (lastReceived).
			if s.inSink.Load() {
				continue
			}
			waited := now.Sub(time.Unix(0, pending))
			silent := now.Sub(time.Unix(0, s.lastReceived.Load()))
			if waited > s.cfg.ProbeTimeout && silent > s.cfg.ProbeTimeout {
				s.stats.ProbesMissed.Add(1)
				s.setNotReady(errProbeOverdue.Error())
				s.logger.Warn("Redis self-probe overdue; resubscribing", "waited", waited.Round(time.Millisecond), "silent_for", silent.Round(time.Millisecond))
				s.confirmed.Store(false)
				s.resubscribe.wake()
			}
			continue
		}
		// Marked before publishing: the probe may come back before Publish returns.
		s.probePending.Store(now.UnixNano())
		seq++
		pctx, cancel := context.WithTimeout(ctx, s.cfg.ProbeTimeout)
		// A cluster node's probe goes to that node, which sends it to its
		// own subscribers first: another node's failure proves nothing here.
		err := s.client.Publish(pctx, s.probeChannel, seq).Err()
		cancel()
		if err != nil {
			s.probePending.CompareAndSwap(now.UnixNano(), 0)
			if ctx.Err() == nil {
				s.logger.Warn("Redis self-probe publish failed", "err", err)
			}
		}
	}
}
