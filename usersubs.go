package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
	"fanout/internal/redisx"
)

const (
	// subscribeBatchMax is the most channels one SUBSCRIBE or UNSUBSCRIBE
	// names.
	subscribeBatchMax = 1000
	// subscribeBatchWait lets the connections arriving together (a
	// reconnect storm) share one SUBSCRIBE.
	subscribeBatchWait = 2 * time.Millisecond
)

// errNotSubscribed refuses a connection whose user's channel Redis did
// not confirm in time.
var errNotSubscribed = errors.New("the Redis subscription for this user was not confirmed in time")

// userSubscription is SUBSCRIBE_MODE=user: this instance subscribes the
// channel of each user connected to it (userChannels), on one pub/sub
// connection, with SUBSCRIBE, or with SSUBSCRIBE when PUBSUB_SHARDED is set
// on a single Redis. With history on (and classic pub/sub) one instance of
// the deployment also holds the recorder lease, whose pattern subscription
// records the events of users connected nowhere (lease.go).
type userSubscription struct {
	conn  *pubsubConn
	users *userChannels
	sink  eventSink
	// lease is the recorder lease (classic pub/sub with history on; nil
	// otherwise).
	lease *recorderLease
}

func newUserSubscription(p subscriptionParts, sink eventSink, rec *recorder) *userSubscription {
	sharded := p.cfg.PubSubSharded
	// With sharded pub/sub a pattern subscription sees no event: there is
	// no lease to record them, and nothing to sync with.
	leased := p.cfg.History && !sharded
	users := newUserChannels(p.cfg.SubscribeGrace, p.cfg.ProbeTimeout, leased)
	users.sharded = sharded
	u := &userSubscription{users: users, sink: sink}
	u.conn = newPubsubConn(p.id, p.rdb, newUserChannelMode(users, p.hub, false), sink, p.cfg, p.logger, p.stats)
	if leased {
		u.lease = newRecorderLease(p)
		// A user's first events after this instance subscribes are found
		// in the history the lease holder writes, not appended ahead of
		// the ones it has still to record.
		rec.waitFirst = u.lease.recording
	}
	return u
}

// run runs the subscription, its sink and the lease until ctx ends.
func (u *userSubscription) run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { u.sink.run(ctx) })
	if u.lease != nil {
		wg.Go(func() { u.lease.run(ctx) })
	}
	u.conn.run(ctx)
}

func (u *userSubscription) ready() (bool, string) { return u.conn.ready() }

func (u *userSubscription) status() subscriptionStatus {
	st := subscriptionStatus{confirmed: u.conn.confirmed.Load(), lastReceived: u.conn.lastReceived.Load(), channels: u.users.count()}
	if u.lease != nil {
		st.recorderLease, st.recorderReceived = u.lease.held.Load(), u.lease.rec.stats.MessagesReceived.Load()
	}
	return st
}

func (u *userSubscription) want(username string)   { u.users.want(username) }
func (u *userSubscription) unwant(username string) { u.users.unwant(username) }
func (u *userSubscription) wait(ctx context.Context, username string) error {
	return u.users.wait(ctx, username)
}
func (u *userSubscription) waitSynced(ctx context.Context, username string) {
	u.users.waitSynced(ctx, username)
}

func (u *userSubscription) startAttrs() []any {
	attrs := []any{"subscribe_mode", subscribeUser, "channels", channelPrefix + "{username}"}
	if u.users.sharded {
		attrs = append(attrs, "sharded", true)
	}
	return attrs
}

// userChannelMode is the channelMode of user mode: a session subscribes
// its probe channel first, and once Redis confirmed it, the users'
// channels in batches (userChannels.flush). It serves a userSubscription,
// or one node of a clusterSubscription.
type userChannelMode struct {
	users *userChannels
	hub   *Hub
	// node is set on one node of a clusterSubscription, whose recorder is
	// shared with the other nodes' sessions (resetsAll).
	node bool
	// onLost is told of a user's channel that Redis dropped without being
	// asked (its slot moved); onMoved of a node's MOVED answer: slot lives
	// at addr now, and lost wanted channels of this node were in it. Both
	// matter on a cluster node only.
	onLost  func(username string)
	onMoved func(slot int, addr string, lost int)
}

func newUserChannelMode(users *userChannels, hub *Hub, node bool) *userChannelMode {
	return &userChannelMode{users: users, hub: hub, node: node, onLost: func(string) {}, onMoved: func(int, string, int) {}}
}

func (m *userChannelMode) open(ctx context.Context, c *pubsubConn) *redis.PubSub {
	return c.client.Subscribe(ctx, c.probeChannel)
}

func (m *userChannelMode) confirms(sub *redis.Subscription, c *pubsubConn) bool {
	return sub.Kind == "subscribe" && sub.Channel == c.probeChannel
}

// begin starts the users' channels' session: from here, before the
// daemon reads ready, a new connection waits for its user's channel.
func (m *userChannelMode) begin(c *pubsubConn, pubsub *redis.PubSub, _ bool) func(context.Context) error {
	m.users.begin()
	return func(ctx context.Context) error { return m.users.flush(ctx, pubsub, c.clock, c.mark) }
}

// other takes Redis's answer to a SUBSCRIBE or UNSUBSCRIBE of a user's
// channel. A new subscription may have missed events: the recorder starts
// the user's place in history again from Redis's clock before it was asked
// for, and the user's open connections catch up once a lost subscription
// is back, before any event of the new one is broadcast.
func (m *userChannelMode) other(ctx context.Context, c *pubsubConn, sub *redis.Subscription) bool {
	username := userOf(sub.Channel)
	if username == "" {
		return true
	}
	switch sub.Kind {
	case "subscribe", "ssubscribe":
		since, ok, catchUp := m.users.confirmed(username)
		if catchUp {
			m.hub.catchUpAfterLoss(username)
		}
		if ok {
			return c.sink.add(ctx, inbound{reset: true, username: username, since: since})
		}
	case "unsubscribe", "sunsubscribe":
		if m.users.unsubscribed(username) {
			// Not asked for: the node gave the slot up (resharding, or it
			// is a replica now).
			m.onLost(username)
		}
	}
	return true
}

// moved takes a node's refusal (MOVED) of an SSUBSCRIBE or SUNSUBSCRIBE:
// the connection is fine; those users' channels are subscribed where the
// slot lives now.
func (m *userChannelMode) moved(err error) bool {
	slot, ok := redisx.MovedSlot(err)
	if !ok || !m.users.sharded {
		return false
	}
	lost := m.users.refused(slot)
	m.onMoved(slot, redisx.MovedAddr(err), len(lost))
	return true
}

func (m *userChannelMode) acked(n uint64)  { m.users.acked(n) }
func (m *userChannelMode) resetsAll() bool { return !m.node }

func (m *userChannelMode) logAttrs(c *pubsubConn) []any {
	if m.users.sharded {
		return []any{"mode", subscribeUser, "sharded", true, "probe_channel", c.probeChannel}
	}
	return []any{"mode", subscribeUser, "probe_channel", c.probeChannel}
}

// userChannels is SUBSCRIBE_MODE=user's set of subscribed channels: the
// channel of every user with a connection (or one being admitted) on this
// instance. The hub says when a user arrives and leaves (want, unwant,
// under its shard lock, so never twice in a row for one user); a flusher
// goroutine, owned by the subscription session, sends the SUBSCRIBE and
// UNSUBSCRIBE commands in batches; the session's read loop reports Redis's
// confirmations (confirmed, unsubscribed). A channel is kept for grace
// after its user's last connection leaves, so that a page reload does not
// unsubscribe and subscribe again.
type userChannels struct {
	grace   time.Duration
	timeout time.Duration

	mu   sync.Mutex
	subs map[string]*userChannel
	// live is set while a session's flusher runs; down is closed when it
	// stops, so that connections waiting for a confirmation proceed.
	live bool
	down chan struct{}
	// subscribed counts the channels Redis confirmed and holds now.
	subscribed int
	// kick wakes the flusher.
	kick wakeup
	// commands and channels count the SUBSCRIBE commands sent and the
	// channels they named: how well connections arriving together share
	// one command.
	commands, channels uint64

	// With history on, a channel is synced once the recorder lease holder
	// has recorded every event published before its subscription: then a
	// resuming connection's catch-up finds all it missed in the history
	// (waitSynced). After each SUBSCRIBE is confirmed, the flusher
	// publishes a marker ("sync:<n>") on the instance's probe channel;
	// the lease holder's pattern subscription reads it after every event
	// published before it, records those, and answers "ack:<n>" on the
	// same channel (recorder.process). batches are the SUBSCRIBEs whose
	// confirmation or answer is awaited, by number; marks are those whose
	// marker is to be published.
	syncs bool
	// sharded subscribes with SSUBSCRIBE, one command per slot.
	sharded bool
	batch   uint64
	batches map[uint64]*subscribeBatch
	marks   []uint64
}

// sentSubscribe is a SUBSCRIBE sent for a channel: Redis's clock just
// before, and its batch.
type sentSubscribe struct {
	since time.Time
	batch uint64
}

// subscribeBatch is one SUBSCRIBE command's channels, waiting for their
// confirmations (left), then for the lease holder's answer to its marker.
type subscribeBatch struct {
	names []string
	left  int
}

// userChannel is one user's channel in the current session.
type userChannel struct {
	// wanted is true while the user has connections here; released is
	// when the last one left.
	wanted   bool
	released time.Time
	// on is true when the last command sent for the channel in this
	// session was SUBSCRIBE; queued when the flusher is to send one.
	on, queued bool
	// pending counts the commands sent and not yet confirmed; sent are
	// the SUBSCRIBEs not yet confirmed, oldest first.
	pending int
	sent    []sentSubscribe
	// live is true while Redis holds the subscription, and ready is
	// closed then.
	live  bool
	ready chan struct{}
	// batch is the SUBSCRIBE that made the subscription; synced is closed
	// once the lease holder has answered its marker.
	batch  uint64
	synced chan struct{}
	// lost is set when Redis dropped the subscription (a session ended,
	// a slot moved): once it is back, the user's open connections catch up
	// on what Redis took meanwhile (Hub.catchUpAfterLoss).
	lost bool
}

// syncWaitMax bounds how long a catch-up waits for its channel to be
// synced: without a lease holder (one is taking over) nothing answers.
const syncWaitMax = time.Second

func newUserChannels(grace, timeout time.Duration, syncs bool) *userChannels {
	down := make(chan struct{})
	close(down)
	return &userChannels{
		grace:   grace,
		timeout: timeout,
		subs:    make(map[string]*userChannel),
		down:    down,
		kick:    newWakeup(),
		syncs:   syncs,
		batches: make(map[uint64]*subscribeBatch),
	}
}

// want marks username's channel as needed: it is subscribed unless it is
// already, or kept if it was waiting out its grace period.
func (u *userChannels) want(username string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	ch := u.subs[username]
	if ch == nil {
		ch = &userChannel{ready: make(chan struct{}), synced: make(chan struct{})}
		u.subs[username] = ch
	}
	ch.wanted = true
	if !ch.on && !ch.queued {
		ch.queued = true
		u.kick.wake()
	}
}

// wantAgain is want for a channel whose subscription was lost elsewhere
// (its slot moved to this node): the user's connections catch up once it
// is subscribed here.
func (u *userChannels) wantAgain(username string) {
	u.want(username)
	u.mu.Lock()
	defer u.mu.Unlock()
	if ch := u.subs[username]; ch != nil {
		ch.lost = true
	}
}

// unwant marks username's channel as no longer needed: it is unsubscribed
// once grace has passed, unless wanted again before.
func (u *userChannels) unwant(username string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if ch := u.subs[username]; ch != nil {
		ch.wanted = false
		ch.released = time.Now()
	}
}

// wait returns once Redis has confirmed username's subscription, or at
// once while no session runs (Redis is down: nothing is published that a
// subscription would miss, and the next session subscribes every wanted
// channel). It fails after the timeout.
func (u *userChannels) wait(ctx context.Context, username string) error {
	u.mu.Lock()
	ch := u.subs[username]
	if ch == nil || !u.live || ch.live {
		u.mu.Unlock()
		return nil
	}
	ready, down := ch.ready, u.down
	u.mu.Unlock()
	if err := awaitSignal(ctx, ready, down, u.timeout); err != errWaitedMax {
		return err
	}
	return errNotSubscribed
}

// batching returns the SUBSCRIBE commands sent and the channels they
// named.
func (u *userChannels) batching() (commands, channels uint64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.commands, u.channels
}

// waitSynced returns once the lease holder has recorded every event
// published before username's channel was subscribed, or after
// syncWaitMax, or at once without history or a session.
func (u *userChannels) waitSynced(ctx context.Context, username string) {
	if !u.syncs {
		return
	}
	u.mu.Lock()
	ch := u.subs[username]
	if ch == nil || !u.live {
		u.mu.Unlock()
		return
	}
	synced, down := ch.synced, u.down
	u.mu.Unlock()
	_ = awaitSignal(ctx, synced, down, syncWaitMax)
}

// acked takes the lease holder's answer to marker n.
func (u *userChannels) acked(n uint64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	b := u.batches[n]
	if b == nil || b.left > 0 {
		return
	}
	delete(u.batches, n)
	for _, name := range b.names {
		if ch := u.subs[name]; ch != nil && ch.batch == n && ch.live {
			close(ch.synced)
			ch.batch = 0
		}
	}
}

// count returns how many user channels Redis holds for this instance.
func (u *userChannels) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.subscribed
}

// begin starts a session, once Redis confirmed it: from here connections
// wait for their channel's confirmation, and every wanted channel is to be
// subscribed. flush runs next.
func (u *userChannels) begin() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.live = true
	u.down = make(chan struct{})
	for _, ch := range u.subs {
		ch.queued = ch.wanted
	}
}

// flush runs a session's batches until ctx ends or a command fails:
// SUBSCRIBE for every wanted channel first, then whatever changes; it
// ends the session (stop) on its way out. clock
// reads Redis's time, taken before each SUBSCRIBE for the history
// recorder's horizon.
func (u *userChannels) flush(ctx context.Context, pubsub *redis.PubSub, clock func(context.Context) (time.Time, error), mark func(context.Context, uint64) error) error {
	defer u.stop()

	tick := time.NewTicker(min(max(u.grace/4, 10*time.Millisecond), time.Second))
	defer tick.Stop()
	u.kick.wake()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-u.kick:
			if !redisx.Sleep(ctx, subscribeBatchWait) {
				return ctx.Err()
			}
		case <-tick.C:
		}
		for _, n := range u.takeMarks() {
			if err := mark(ctx, n); err != nil {
				return err
			}
		}
		subs, unsubs := u.due(time.Now())
		for len(subs) > 0 {
			n := min(len(subs), subscribeBatchMax)
			if err := u.subscribe(ctx, pubsub, clock, subs[:n]); err != nil {
				return err
			}
			subs = subs[n:]
		}
		for len(unsubs) > 0 {
			n := min(len(unsubs), subscribeBatchMax)
			if err := u.send(ctx, pubsub, false, unsubs[:n]); err != nil {
				return fmt.Errorf("unsubscribe %d channels: %w", n, err)
			}
			unsubs = unsubs[n:]
		}
	}
}

// takeMarks returns the batches whose marker is to be published now.
func (u *userChannels) takeMarks() []uint64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	m := u.marks
	u.marks = nil
	return m
}

// due returns the channels to subscribe and to unsubscribe now, and marks
// them sent.
func (u *userChannels) due(now time.Time) (subs, unsubs []string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for name, ch := range u.subs {
		switch {
		case ch.queued:
			ch.queued = false
			if ch.wanted && !ch.on {
				ch.on = true
				ch.pending++
				subs = append(subs, name)
			}
		case ch.on && !ch.wanted && now.Sub(ch.released) >= u.grace:
			ch.on = false
			ch.pending++
			u.dropped(ch)
			unsubs = append(unsubs, channelPrefix+name)
		case !ch.on && !ch.wanted && ch.pending == 0:
			delete(u.subs, name)
		}
	}
	return subs, unsubs
}

// subscribe sends one SUBSCRIBE for names, after reading Redis's clock.
func (u *userChannels) subscribe(ctx context.Context, pubsub *redis.PubSub, clock func(context.Context) (time.Time, error), names []string) error {
	since, err := clock(ctx)
	if err != nil {
		return err
	}
	channels := make([]string, len(names))
	u.mu.Lock()
	u.commands++
	u.channels += uint64(len(names))
	u.batch++
	b := &subscribeBatch{names: names, left: len(names)}
	u.batches[u.batch] = b
	for i, name := range names {
		channels[i] = channelPrefix + name
		if ch := u.subs[name]; ch != nil {
			ch.sent = append(ch.sent, sentSubscribe{since: since, batch: u.batch})
			u.unsync(ch)
			ch.batch = u.batch
		}
	}
	u.mu.Unlock()
	if err := u.send(ctx, pubsub, true, channels); err != nil {
		return fmt.Errorf("subscribe %d channels: %w", len(channels), err)
	}
	return nil
}

// send subscribes (or unsubscribes) channels: one SUBSCRIBE, or with
// sharded pub/sub one SSUBSCRIBE per slot, since a cluster node refuses
// one that names channels of several slots (CROSSSLOT). Redis confirms
// each command's channels in order, and the commands in order.
func (u *userChannels) send(ctx context.Context, pubsub *redis.PubSub, subscribe bool, channels []string) error {
	if !u.sharded {
		if subscribe {
			return pubsub.Subscribe(ctx, channels...)
		}
		return pubsub.Unsubscribe(ctx, channels...)
	}
	bySlot := make(map[int][]string)
	var order []int
	for _, c := range channels {
		slot := history.Slot(c)
		if bySlot[slot] == nil {
			order = append(order, slot)
		}
		bySlot[slot] = append(bySlot[slot], c)
	}
	for _, slot := range order {
		var err error
		if subscribe {
			err = pubsub.SSubscribe(ctx, bySlot[slot]...)
		} else {
			err = pubsub.SUnsubscribe(ctx, bySlot[slot]...)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// refused takes a node's refusal (MOVED) of the commands sent for the
// channels of slot: none of them holds, and the wanted ones are
// returned, to be subscribed where the slot lives now.
func (u *userChannels) refused(slot int) []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	var lost []string
	for name, ch := range u.subs {
		if ch.pending == 0 || history.Slot(channelPrefix+name) != slot {
			continue
		}
		ch.on, ch.pending, ch.sent = false, 0, nil
		u.dropped(ch)
		if ch.wanted {
			ch.lost = true
			lost = append(lost, name)
		}
	}
	return lost
}

// forget drops username's channel without a command: its slot lives on
// another node now, which the clusterSubscription subscribes it on; this node
// dropped the subscription already, or is gone.
func (u *userChannels) forget(username string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if ch := u.subs[username]; ch != nil {
		u.dropped(ch)
		delete(u.subs, username)
	}
}

// confirmed takes Redis's confirmation of a SUBSCRIBE for username and
// returns Redis's clock before that SUBSCRIBE: the recorder's horizon for
// the user, whose earlier place in history is lost. ok is false for a
// channel this session did not subscribe; catchUp is true when the
// subscription is back after Redis dropped it, and live now.
func (u *userChannels) confirmed(username string) (since time.Time, ok, catchUp bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	ch := u.subs[username]
	if ch == nil || len(ch.sent) == 0 {
		return time.Time{}, false, false
	}
	sent := ch.sent[0]
	ch.sent = ch.sent[1:]
	u.settled(ch)
	if ch.live && ch.lost {
		ch.lost, catchUp = false, true
	}
	if b := u.batches[sent.batch]; b != nil {
		// Redis confirms a SUBSCRIBE's channels in order: after the last
		// one, the marker follows every one of them.
		if b.left--; b.left == 0 {
			if u.syncs {
				u.marks = append(u.marks, sent.batch)
				u.kick.wake()
			} else {
				delete(u.batches, sent.batch)
			}
		}
	}
	return sent.since, true, catchUp
}

// unsync marks ch as not synced (a new subscription, or none).
func (u *userChannels) unsync(ch *userChannel) {
	select {
	case <-ch.synced:
		ch.synced = make(chan struct{})
	default:
	}
	ch.batch = 0
}

// unsubscribed takes Redis's confirmation of an UNSUBSCRIBE. It reports
// true for an unsubscription nobody asked for, of a wanted channel: a
// cluster node that gave up the channel's slot drops its subscribers.
func (u *userChannels) unsubscribed(username string) (lost bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	ch := u.subs[username]
	switch {
	case ch == nil:
	case ch.pending > 0:
		u.settled(ch)
	case ch.on:
		ch.on = false
		u.dropped(ch)
		ch.lost = ch.wanted
		return ch.wanted
	}
	return false
}

// settled counts one confirmation for ch; once every command sent is
// confirmed, the last one says whether Redis holds the subscription.
func (u *userChannels) settled(ch *userChannel) {
	ch.pending--
	if ch.pending == 0 {
		u.setLive(ch, ch.on)
	}
}

// dropped marks ch as holding no subscription: not live, not synced.
func (u *userChannels) dropped(ch *userChannel) {
	u.setLive(ch, false)
	u.unsync(ch)
}

func (u *userChannels) setLive(ch *userChannel, live bool) {
	switch {
	case live && !ch.live:
		u.subscribed++
		close(ch.ready)
	case !live && ch.live:
		u.subscribed--
		ch.ready = make(chan struct{})
	}
	ch.live = live
}

// stop ends a session: Redis holds none of its subscriptions any more,
// and the next session subscribes every wanted channel again.
func (u *userChannels) stop() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.live = false
	close(u.down)
	clear(u.batches)
	u.marks = nil
	for name, ch := range u.subs {
		if !ch.wanted {
			delete(u.subs, name)
			continue
		}
		u.dropped(ch)
		ch.on, ch.queued, ch.pending, ch.sent = false, false, 0, nil
		ch.lost = true
	}
}

// userOf returns the username of a user channel, or "" for another one.
func userOf(channel string) string {
	if !strings.HasPrefix(channel, channelPrefix) || strings.HasPrefix(channel, probePrefix) {
		return ""
	}
	return strings.TrimPrefix(channel, channelPrefix)
}
