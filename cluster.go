package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
	"fanout/internal/redisx"
)

// slotMapEvery is how often the router reads the cluster's slot map
// when nothing asked it to: a failover or a reshard it was not told of
// is found within this.
const slotMapEvery = time.Second

// slotMapFailing is how often the slot map is read while a master's
// subscription fails.
const slotMapFailing = 200 * time.Millisecond

// slotMapGap spaces the reads of the slot map that node subscriptions
// ask for, so that a burst of dropped channels costs one read.
const slotMapGap = 100 * time.Millisecond

// clusterSubscription is PUBSUB_SHARDED on a Redis Cluster: a user's
// channel is subscribed with SSUBSCRIBE on the master that owns its slot,
// so each node sends this instance only the events of its own users. It
// keeps the cluster's slot map, one node subscription (a pubsubConn of
// that master, with its own userChannels) per master, and which node each
// wanted user's channel is on. It reads the slot map again when a node's
// subscription fails (failover), when a node drops or refuses a channel (a
// slot moved), and every slotMapEvery; then it moves the channels whose
// slot moved, starts subscriptions on new masters and stops those of nodes
// that are masters no more.
type clusterSubscription struct {
	cluster *redis.ClusterClient
	// p are the parts the nodes' subscriptions are built from.
	p      subscriptionParts
	cfg    Config
	logger *slog.Logger
	// sink is shared by the nodes' subscriptions; run runs it.
	sink eventSink
	// nodeIDs numbers the nodes' probe channels.
	nodeIDs atomic.Int64

	// refresh asks run to read the slot map again.
	refresh wakeup

	mu sync.Mutex
	// slots maps each slot to its master's address ("" before the first
	// read, or for a slot no node serves).
	slots  []string
	loaded bool
	// unreached is set when reading the slot map failed before it was
	// ever read: /ready says Redis is unreachable.
	unreached bool
	nodes     map[string]*nodeSubscription
	// owner is the node subscribing each wanted user's channel; nil when
	// its slot has no master now.
	owner map[string]*nodeSubscription
	// moved is set when a node dropped or refused channels: every wanted
	// channel is offered again to its node on the next read.
	moved bool
	// hint is the node to read the slot map from next: the one that
	// dropped a channel, or that a MOVED named; it knows where its slots
	// went, when others may not yet.
	hint string
	// opts are the node clients' options, for reading a hint's map.
	opts redis.Options
	// logs rate-limits the lines about dropped and refused channels.
	logs *logLimiter
}

// nodeSubscription is one master's subscription.
type nodeSubscription struct {
	addr   string
	conn   *pubsubConn
	users  *userChannels
	client *redis.Client
	stop   context.CancelFunc
}

func newClusterSubscription(p subscriptionParts, cluster *redis.ClusterClient, sink eventSink) *clusterSubscription {
	return &clusterSubscription{
		cluster: cluster,
		p:       p,
		cfg:     p.cfg,
		opts:    p.opts,
		sink:    sink,
		logs:    newLogLimiter(1, 5),
		logger:  p.logger,
		refresh: newWakeup(),
		nodes:   make(map[string]*nodeSubscription),
		owner:   make(map[string]*nodeSubscription),
	}
}

// want subscribes username's channel on the node owning its slot.
func (r *clusterSubscription) want(username string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.route(username)
	r.owner[username] = n
	if n != nil {
		n.users.want(username)
	}
}

// unwant releases username's channel on its node (after the grace).
func (r *clusterSubscription) unwant(username string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := r.owner[username]; n != nil {
		n.users.unwant(username)
	}
	delete(r.owner, username)
}

// wait returns once username's node has confirmed the channel (see
// userChannels.wait).
func (r *clusterSubscription) wait(ctx context.Context, username string) error {
	r.mu.Lock()
	n := r.owner[username]
	r.mu.Unlock()
	if n == nil {
		return nil
	}
	return n.users.wait(ctx, username)
}

// route returns the node of username's slot; r.mu is held.
func (r *clusterSubscription) route(username string) *nodeSubscription {
	if !r.loaded {
		return nil
	}
	return r.nodes[r.slots[history.Slot(channelPrefix+username)]]
}

// lostOn returns the handler of node addr's reports of a channel it
// dropped (its slot moved away): the map is read from that node next.
func (r *clusterSubscription) lostOn(addr string) func(username string) {
	return func(username string) {
		r.logs.log(r.logger, slog.LevelInfo, "Redis Cluster node dropped a channel (its slot moved); subscribing it where the slot lives now",
			"node", addr, "channel", channelPrefix+username)
		r.mu.Lock()
		r.moved, r.hint = true, addr
		r.mu.Unlock()
		r.ask()
	}
}

// movedOn returns the handler of node addr's MOVED answers: the map is
// read from the node named, which owns the slot.
func (r *clusterSubscription) movedOn(addr string) func(slot int, to string, lost int) {
	return func(slot int, to string, lost int) {
		r.logs.log(r.logger, slog.LevelInfo, "Redis Cluster node refused a subscription (MOVED); subscribing where the slot lives now",
			"node", addr, "slot", slot, "owner", to, "channels", lost)
		r.mu.Lock()
		r.moved = true
		if to != "" {
			r.hint = to
		}
		r.mu.Unlock()
		r.ask()
	}
}

func (r *clusterSubscription) ask() { r.refresh.wake() }

// run keeps the subscriptions in line with the slot map until ctx ends;
// it owns the nodes' subscriptions and the sink.
func (r *clusterSubscription) run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { r.sink.run(ctx) })
	defer r.stopAll()
	tick := time.NewTimer(slotMapEvery)
	defer tick.Stop()
	backoff := redisx.Backoff{Min: retryMin, Max: r.cfg.RedisRetryMax}
	for {
		if err := r.reload(ctx, &wg); err != nil {
			if ctx.Err() != nil {
				return
			}
			r.mu.Lock()
			r.unreached = !r.loaded
			r.mu.Unlock()
			wait := backoff.Next()
			r.logger.Warn("Reading the Redis Cluster slot map failed; retrying", "addr", redisTarget(r.cfg), "err", err, "retry_in", wait.Round(time.Millisecond))
			if !redisx.Sleep(ctx, wait) {
				return
			}
			continue
		}
		backoff.Reset()
		// While a master's subscription fails, its replica may be
		// promoted any moment: the map is read more often.
		every := slotMapEvery
		if !r.allConfirmed() {
			every = slotMapFailing
		}
		tick.Reset(every)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-r.refresh:
			if !redisx.Sleep(ctx, slotMapGap) {
				return
			}
		}
	}
}

// reload reads the slot map and applies it.
func (r *clusterSubscription) reload(ctx context.Context, wg *sync.WaitGroup) error {
	tctx, cancel := context.WithTimeout(ctx, r.cfg.ProbeTimeout)
	defer cancel()
	r.mu.Lock()
	hint := r.hint
	r.hint = ""
	r.mu.Unlock()
	var ranges []redis.ClusterSlot
	err := errors.New("no node to ask")
	if hint != "" {
		o := r.opts
		o.Addr, o.DB = hint, 0
		c := redis.NewClient(&o)
		ranges, err = c.ClusterSlots(tctx).Result()
		_ = c.Close()
	}
	// Then the masters whose subscription is live (a dead one would
	// hold the read up to its timeout), then any node go-redis knows.
	for _, n := range r.liveNodes() {
		if err == nil {
			break
		}
		ranges, err = n.client.ClusterSlots(tctx).Result()
	}
	if err != nil {
		if ranges, err = r.cluster.ClusterSlots(tctx).Result(); err != nil {
			return fmt.Errorf("read the slot map: %w", err)
		}
	}
	slots := make([]string, history.ClusterSlots)
	for _, rg := range ranges {
		if len(rg.Nodes) == 0 || rg.Start < 0 || rg.End >= history.ClusterSlots {
			continue
		}
		for s := rg.Start; s <= rg.End; s++ {
			slots[s] = rg.Nodes[0].Addr
		}
	}
	if r.apply(ctx, wg, slots) {
		// go-redis's own map, for the scripts and the history reads, at
		// once rather than at redisx.KeepSlotsFresh's next tick.
		redisx.ReloadSlots(ctx, r.cluster)
	}
	return nil
}

// apply makes the subscriptions follow slots, and reports whether the
// map changed.
func (r *clusterSubscription) apply(ctx context.Context, wg *sync.WaitGroup, slots []string) (changed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	changed = !r.loaded
	masters := make(map[string]bool)
	for s, addr := range slots {
		if addr != "" {
			masters[addr] = true
		}
		if r.loaded && r.slots[s] != addr {
			changed = true
		}
	}
	if !changed && !r.moved {
		return false
	}
	for addr := range masters {
		if r.nodes[addr] == nil {
			r.nodes[addr] = r.start(ctx, wg, addr)
			r.logger.Info("Redis Cluster master found; subscribing its users' channels there", "node", addr)
		}
	}
	r.slots, r.loaded, r.moved, r.unreached = slots, true, false, false
	moved := 0
	for name, old := range r.owner {
		n := r.route(name)
		if n != old {
			if old != nil {
				old.users.forget(name)
				if n != nil {
					n.users.wantAgain(name)
				}
			}
			r.owner[name] = n
			moved++
		}
		if n != nil {
			// Subscribed unless it is already: also the channels a node
			// dropped while keeping their slot.
			n.users.want(name)
		}
	}
	for addr, n := range r.nodes {
		if !masters[addr] {
			r.logger.Info("Redis Cluster node is no master any more; its users' channels moved", "node", addr)
			n.stop()
			delete(r.nodes, addr)
		}
	}
	if moved > 0 {
		r.logger.Info("Redis Cluster slots moved; channels resubscribed on their new nodes", "channels", moved)
	}
	return changed
}

// start runs the subscription of the master at addr, on a client of that
// node alone; r.mu is held.
func (r *clusterSubscription) start(ctx context.Context, wg *sync.WaitGroup, addr string) *nodeSubscription {
	users := newUserChannels(r.cfg.SubscribeGrace, r.cfg.ProbeTimeout, false)
	users.sharded = true
	mode := newUserChannelMode(users, r.p.hub, true)
	mode.onLost = r.lostOn(addr)
	mode.onMoved = r.movedOn(addr)
	nodeOpts := r.opts
	nodeOpts.Addr, nodeOpts.DB = addr, 0
	client := redis.NewClient(&nodeOpts)
	id := r.p.id + "-" + strconv.FormatInt(r.nodeIDs.Add(1), 10)
	conn := newPubsubConn(id, client, mode, r.sink, r.cfg, r.logger.With("node", addr), r.p.stats)
	conn.addr = addr
	conn.onFailure = r.ask
	// Not waited for on stop (r.mu is held): run's WaitGroup does.
	nctx, stop := context.WithCancel(ctx)
	n := &nodeSubscription{addr: addr, conn: conn, users: users, client: client, stop: stop}
	wg.Go(func() {
		defer client.Close()
		conn.run(nctx)
	})
	return n
}

// stopAll stops every node's subscription.
func (r *clusterSubscription) stopAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for addr, n := range r.nodes {
		n.stop()
		delete(r.nodes, addr)
	}
}

// liveNodes returns the nodes whose subscription Redis confirmed.
func (r *clusterSubscription) liveNodes() []*nodeSubscription {
	r.mu.Lock()
	defer r.mu.Unlock()
	var live []*nodeSubscription
	for _, n := range r.nodes {
		if n.conn.confirmed.Load() {
			live = append(live, n)
		}
	}
	return live
}

// allConfirmed reports whether every master's subscription is confirmed.
func (r *clusterSubscription) allConfirmed() bool {
	for _, c := range r.conns() {
		if !c.confirmed.Load() {
			return false
		}
	}
	return true
}

// conns returns the nodes' connections.
func (r *clusterSubscription) conns() []*pubsubConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	conns := make([]*pubsubConn, 0, len(r.nodes))
	for _, n := range r.nodes {
		conns = append(conns, n.conn)
	}
	return conns
}

// ready reports whether every master's subscription is live, or why not.
func (r *clusterSubscription) ready() (bool, string) {
	r.mu.Lock()
	loaded, unreached := r.loaded, r.unreached
	r.mu.Unlock()
	switch {
	case unreached:
		return false, notReadyUnreachable
	case !loaded:
		return false, "waiting for the Redis Cluster slot map"
	}
	for _, c := range r.conns() {
		if ok, why := c.ready(); !ok {
			return false, why
		}
	}
	return true, ""
}

// status is the nodes' together: confirmed when every one is, last
// received when any was.
func (r *clusterSubscription) status() subscriptionStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := subscriptionStatus{confirmed: len(r.nodes) > 0}
	for _, n := range r.nodes {
		st.confirmed = st.confirmed && n.conn.confirmed.Load()
		st.lastReceived = max(st.lastReceived, n.conn.lastReceived.Load())
		st.channels += n.users.count()
	}
	return st
}

// waitSynced returns at once: with sharded pub/sub there is no lease
// holder to sync with.
func (r *clusterSubscription) waitSynced(context.Context, string) {}

func (r *clusterSubscription) startAttrs() []any {
	return []any{"subscribe_mode", subscribeUser, "sharded", true, "channels", channelPrefix + "{username}"}
}
