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
	// channelPattern is what the daemon subscribes to.
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

// errProbeOverdue ends a subscription that stopped delivering silently.
var errProbeOverdue = errors.New("self-probe did not come back: subscription stopped delivering")

// Subscriber holds the Redis PSUBSCRIBE on workflow:events:* and hands each
// message to the hub. It reads the subscription itself rather than through
// go-redis's Channel(), whose buffer drops messages once it sits full: here
// nothing is buffered between Redis and the hub, and the hub never blocks.
type Subscriber struct {
	rdb    redis.UniversalClient
	hub    *Hub
	cfg    Config
	logger *slog.Logger
	stats  *Stats

	// instanceID names this process: in its probe channel and in /admin/stats.
	instanceID string
	// probeChannel is this instance's own probe channel.
	probeChannel string
	// notReady is nil while the subscription is confirmed and probes come
	// back; otherwise it holds the reason /ready reports.
	notReady atomic.Pointer[string]
	// confirmed is true from the PSUBSCRIBE confirmation until the session ends.
	confirmed atomic.Bool
	// probePending is when the oldest probe not yet back was published
	// (UnixNano), or 0 when none is outstanding.
	probePending atomic.Int64
	// lastReceived is when the session last read anything (UnixNano).
	lastReceived atomic.Int64
	// resubscribe carries the prober's request to drop the session
	// (capacity 1).
	resubscribe chan struct{}

	invalidLog *logLimiter

	// recorder, with HISTORY on, gives each event its id before it is
	// broadcast; nil with HISTORY=off.
	recorder *recorder
	// users, in SUBSCRIBE_MODE=user, are the channels this instance
	// subscribes to instead of the pattern; nil in pattern mode.
	users *userChannels
	// answersSyncs is set on the recorder lease holder's recording
	// subscription: it answers other instances' markers (userChannels).
	answersSyncs bool
	// onConfirmed, when set, runs each time Redis confirms a session.
	onConfirmed func(ctx context.Context)

	// addr names the Redis the session reads, for the logs.
	addr string
	// node, when set, is the client of the one cluster node this
	// subscription reads (PUBSUB_SHARDED on a cluster: shardRouter): its
	// sessions, its probes and Redis's clock for the recorder use it
	// (home).
	node *redis.Client
	// shard is set on one node's subscription of a shardRouter: the
	// router runs the shared recorder, and each user's place in history
	// is reset as its channel is subscribed, not every user's at once.
	shard bool
	// onLost, when set, is told of a user's channel that Redis dropped or
	// refused (its slot moved to another node); onFailure of every failed
	// session.
	onLost    func(username string)
	onFailure func()
	// wasConfirmed is set once Redis confirmed a session: a later one
	// follows a lost subscription. Owned by run.
	wasConfirmed bool
	// onMoved, when set, is told of a node's MOVED answer: slot lives at
	// addr now, and lost channels of this node were in it.
	onMoved func(slot int, addr string, lost int)
}

func newSubscriber(id string, rdb redis.UniversalClient, hub *Hub, cfg Config, logger *slog.Logger, stats *Stats) *Subscriber {
	s := &Subscriber{
		instanceID:   id,
		rdb:          rdb,
		hub:          hub,
		cfg:          cfg,
		logger:       logger,
		stats:        stats,
		probeChannel: probePrefix + id,
		resubscribe:  make(chan struct{}, 1),
		invalidLog:   newLogLimiter(1, 5),
		addr:         redisTarget(cfg),
	}
	s.setNotReady("waiting for the Redis subscription")
	return s
}

// newInstanceID returns a random name for this process's probe channel.
func newInstanceID() string {
	b := make([]byte, 8)
	_, _ = crand.Read(b)
	return hex.EncodeToString(b)
}

// ready reports whether the subscription is live, or why not.
func (s *Subscriber) ready() (bool, string) {
	if reason := s.notReady.Load(); reason != nil {
		return false, *reason
	}
	return true, ""
}

func (s *Subscriber) setNotReady(reason string) { s.notReady.Store(&reason) }

// run subscribes until ctx ends, reconnecting with capped, jittered backoff
// after every failure. It owns the prober goroutine, and the recorder's,
// and waits for them.
func (s *Subscriber) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { s.probe(ctx) })
	if s.recorder != nil && !s.shard {
		wg.Go(func() { s.recorder.run(ctx) })
	}
	defer wg.Wait()

	backoff := redisx.Backoff{Min: retryMin, Max: s.cfg.RedisRetryMax}
	for ctx.Err() == nil {
		confirmed, err := s.session(ctx)
		if ctx.Err() != nil {
			return
		}
		s.stats.RedisFailures.Add(1)
		if s.onFailure != nil {
			s.onFailure()
		}
		// /ready is public: the reason names no address; the log has the error.
		s.setNotReady("redis subscription lost; retrying (the daemon's log says why)")
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
func (s *Subscriber) session(ctx context.Context) (confirmed bool, err error) {
	// Where this instance's place in every user's history begins: Redis's
	// clock before the subscription (history.RecordSource).
	since, err := s.clock(ctx)
	if err != nil {
		return false, err
	}
	var pubsub *redis.PubSub
	if s.users != nil {
		// User mode: the probe channel first; the users' channels once
		// Redis confirmed it, in batches (userChannels.flush).
		pubsub = s.home().Subscribe(ctx, s.probeChannel)
	} else {
		pubsub = s.rdb.PSubscribe(ctx, channelPattern)
	}
	defer pubsub.Close()
	// The flusher of user mode ends with the session.
	flushCtx, stopFlush := context.WithCancel(ctx)
	var flusher sync.WaitGroup
	defer flusher.Wait()
	defer stopFlush()
	flushErr := make(chan error, 1)
	// Closing the connection ends a blocked read at once on shutdown.
	stopClose := context.AfterFunc(ctx, func() { _ = pubsub.Close() })
	defer stopClose()
	defer s.confirmed.Store(false)
	// Drop a request aimed at the previous session.
	select {
	case <-s.resubscribe:
	default:
	}

	for ctx.Err() == nil {
		select {
		case <-s.resubscribe:
			return confirmed, errProbeOverdue
		case err := <-flushErr:
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
			if slot, ok := redisx.MovedSlot(err); ok && confirmed && s.sharded() {
				// A node that does not own the slot refused an SSUBSCRIBE
				// (or SUNSUBSCRIBE): the connection is fine; those users'
				// channels are subscribed where the slot lives now.
				lost := s.users.refused(slot)
				if s.onMoved != nil {
					s.onMoved(slot, redisx.MovedAddr(err), len(lost))
				}
				continue
			}
			return confirmed, fmt.Errorf("receive from %s: %w", channelPattern, err)
		}
		s.lastReceived.Store(time.Now().UnixNano())
		switch m := msg.(type) {
		case *redis.Subscription:
			if s.users != nil && m.Channel != s.probeChannel {
				if !s.userConfirmation(ctx, m) {
					return confirmed, ctx.Err()
				}
				continue
			}
			if (m.Kind == "psubscribe" && m.Channel == channelPattern) || (m.Kind == "subscribe" && m.Channel == s.probeChannel) {
				confirmed = true
				s.probePending.Store(0)
				if s.recorder != nil && !s.shard {
					// Messages may have been missed since the last
					// session: every user's place in history is lost.
					if !s.recorder.add(ctx, inbound{reset: true, since: since}) {
						return confirmed, ctx.Err()
					}
				}
				if s.users == nil && s.hub != nil && s.wasConfirmed {
					// The pattern is back: Redis may have taken events
					// while it was gone, which the history holds.
					s.hub.catchUpEveryoneAfterLoss()
				}
				s.wasConfirmed = true
				if s.users != nil {
					// Before the daemon reads ready: from here a new
					// connection waits for its user's channel.
					s.users.begin()
					flusher.Go(func() {
						if err := s.users.flush(flushCtx, pubsub, s.clock, s.mark); err != nil && flushCtx.Err() == nil {
							flushErr <- err
						}
					})
				}
				s.confirmed.Store(true)
				s.notReady.Store(nil)
				if s.onConfirmed != nil {
					s.onConfirmed(ctx)
				}
				switch {
				case s.sharded():
					s.logger.Info("Subscribed to Redis", "addr", s.addr, "mode", subscribeUser, "sharded", true, "probe_channel", s.probeChannel)
				case s.users != nil:
					s.logger.Info("Subscribed to Redis", "addr", s.addr, "mode", subscribeUser, "probe_channel", s.probeChannel)
				default:
					s.logger.Info("Subscribed to Redis", "addr", s.addr, "pattern", channelPattern)
				}
			}
		case *redis.Message:
			s.handle(ctx, m.Channel, m.Payload)
		}
	}
	return confirmed, ctx.Err()
}

// userConfirmation takes Redis's answer to a SUBSCRIBE or UNSUBSCRIBE of
// a user's channel in user mode. A new subscription may have missed
// events: the recorder starts the user's place in history again from
// Redis's clock before it was asked for. It reports false when ctx ended.
func (s *Subscriber) userConfirmation(ctx context.Context, m *redis.Subscription) bool {
	username := userOf(m.Channel)
	if username == "" {
		return true
	}
	switch m.Kind {
	case "subscribe", "ssubscribe":
		since, ok, resync := s.users.confirmed(username)
		if resync && s.hub != nil {
			// Before any event of the new subscription is broadcast.
			s.hub.catchUpAfterLoss(username)
		}
		if ok && s.recorder != nil {
			return s.recorder.add(ctx, inbound{reset: true, username: username, since: since})
		}
	case "unsubscribe", "sunsubscribe":
		if s.users.unsubscribed(username) && s.onLost != nil {
			// Not asked for: the node gave the slot up (resharding, or it
			// is a replica now).
			s.onLost(username)
		}
	}
	return true
}

// The payloads of the markers that sync a user mode instance's new
// subscriptions with the recorder lease holder, on the instance's probe
// channel, and of the holder's answers (userChannels).
const (
	syncPrefix = "sync:"
	ackPrefix  = "ack:"
)

// mark publishes the marker of SUBSCRIBE batch n on the probe channel.
func (s *Subscriber) mark(ctx context.Context, n uint64) error {
	tctx, cancel := context.WithTimeout(ctx, s.cfg.ProbeTimeout)
	defer cancel()
	if err := s.rdb.Publish(tctx, s.probeChannel, syncPrefix+strconv.FormatUint(n, 10)).Err(); err != nil {
		return fmt.Errorf("publish a subscription marker: %w", err)
	}
	return nil
}

// home is the client of the Redis the subscription reads: its node's on
// a cluster with sharded pub/sub, else the daemon's.
func (s *Subscriber) home() redis.UniversalClient {
	if s.node != nil {
		return s.node
	}
	return s.rdb
}

// sharded reports whether the users' channels are subscribed with
// SSUBSCRIBE.
func (s *Subscriber) sharded() bool { return s.users != nil && s.users.sharded }

// clock returns Redis's time, for the recorder's horizon; without a
// recorder it is not needed and not read.
func (s *Subscriber) clock(ctx context.Context) (time.Time, error) {
	if s.recorder == nil {
		return time.Time{}, nil
	}
	tctx, cancel := context.WithTimeout(ctx, s.cfg.ProbeTimeout)
	defer cancel()
	// A shard's clock is that of the node holding its users' histories.
	t, err := s.home().Time(tctx).Result()
	if err != nil {
		return t, fmt.Errorf("read the Redis clock: %w", err)
	}
	return t, nil
}

// handle validates one published payload and broadcasts it to its user,
// or with HISTORY on hands it to the recorder, which does once it has its
// id.
func (s *Subscriber) handle(ctx context.Context, channel, payload string) {
	if strings.HasPrefix(channel, probePrefix) {
		if channel == s.probeChannel {
			// Redis keeps publish order, so every earlier probe is back too.
			s.probePending.Store(0)
			if n, ok := strings.CutPrefix(payload, ackPrefix); ok && s.users != nil {
				if seq, err := strconv.ParseUint(n, 10, 64); err == nil {
					s.users.acked(seq)
				}
			}
			return
		}
		if n, ok := strings.CutPrefix(payload, syncPrefix); ok && s.answersSyncs {
			// Another instance's marker (userChannels): answered once every
			// event read before it is recorded.
			s.recorder.add(ctx, inbound{ack: channel, payload: ackPrefix + n})
		}
		return // another instance's probe
	}
	username := strings.TrimPrefix(channel, channelPrefix)
	if !s.valid(channel, payload) {
		s.stats.MessagesReceived.Add(1)
		return
	}
	if s.recorder != nil {
		// Counted as received once broadcast, like the others.
		s.recorder.add(ctx, inbound{username: username, payload: payload, received: time.Now()})
		return
	}
	s.broadcast(username, newEvent("", []byte(payload), time.Now()))
	s.stats.MessagesReceived.Add(1)
}

// valid reports whether payload is to be forwarded, and counts and logs
// (rate-limited) one that is not.
func (s *Subscriber) valid(channel, payload string) bool {
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
	case !json.Valid([]byte(payload)):
		s.stats.MessagesInvalid.Add(1)
		s.invalidLog.log(s.logger, slog.LevelWarn, "Dropped published message: not valid JSON",
			"channel", channel, "bytes", len(payload), "dropped_total", s.stats.MessagesInvalid.Load())
		return false
	}
	return true
}

// broadcast hands msg to username's connections.
func (s *Subscriber) broadcast(username string, msg *message) {
	n := s.hub.broadcast(username, msg)
	if s.logger.Enabled(context.Background(), slog.LevelDebug) {
		s.logger.Debug("Broadcasting to username", "username", username, "client_count", n)
	}
}

// probe publishes to this instance's probe channel every ProbeInterval.
// When a published probe has not come back within ProbeTimeout while the
// subscription claims to be live, it marks the daemon not ready and asks
// for a new subscription: pub/sub connections can stop delivering after a
// failover while every health check stays green. A probe that cannot be
// published proves nothing about the subscription and is only logged.
func (s *Subscriber) probe(ctx context.Context) {
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
			// probe is queued behind them.
			waited := now.Sub(time.Unix(0, pending))
			silent := now.Sub(time.Unix(0, s.lastReceived.Load()))
			if waited > s.cfg.ProbeTimeout && silent > s.cfg.ProbeTimeout {
				s.stats.ProbesMissed.Add(1)
				s.setNotReady(errProbeOverdue.Error())
				s.logger.Warn("Redis self-probe overdue; resubscribing", "waited", waited.Round(time.Millisecond), "silent_for", silent.Round(time.Millisecond))
				s.confirmed.Store(false)
				select {
				case s.resubscribe <- struct{}{}:
				default:
				}
			}
			continue
		}
		// Marked before publishing: the probe may come back before Publish returns.
		s.probePending.Store(now.UnixNano())
		seq++
		pctx, cancel := context.WithTimeout(ctx, s.cfg.ProbeTimeout)
		// A shard's probe goes to its own node, which sends it to its own
		// subscribers first: another node's failure proves nothing here.
		err := s.home().Publish(pctx, s.probeChannel, seq).Err()
		cancel()
		if err != nil {
			s.probePending.CompareAndSwap(now.UnixNano(), 0)
			if ctx.Err() == nil {
				s.logger.Warn("Redis self-probe publish failed", "err", err)
			}
		}
	}
}
