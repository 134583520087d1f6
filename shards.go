package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
	"fanout/internal/redisx"
)

// shardRefreshEvery is how often the router reads the cluster's slot map
// when nothing asked it to: a failover or a reshard it was not told of
// is found within this.
const shardRefreshEvery = time.Second

// shardRefreshFailing is how often the slot map is read while a master's
// subscription fails.
const shardRefreshFailing = 200 * time.Millisecond

// shardRefreshGap spaces the reads of the slot map that node subscriptions
// ask for, so that a burst of dropped channels costs one read.
const shardRefreshGap = 100 * time.Millisecond

// shardRouter is PUBSUB_SHARDED on a Redis Cluster: a user's channel is
// subscribed with SSUBSCRIBE on the master that owns its slot, so each
// node sends this instance only the events of its own users. The router
// keeps the cluster's slot map, one subscription (a Subscriber with its
// own userChannels) per master, and which node each wanted user's channel
// is on. It reads the slot map again when a node's subscription fails
// (failover), when a node drops or refuses a channel (a slot moved), and
// every shardRefreshEvery; then it moves the channels whose slot moved,
// starts subscriptions on new masters and stops those of nodes that are
// masters no more.
type shardRouter struct {
	cluster *redis.ClusterClient
	// newNode builds the subscription of the master at addr.
	newNode func(addr string, users *userChannels) (*Subscriber, *redis.Client)
	cfg     Config
	logger  *slog.Logger
	// recorder is shared by the nodes' subscriptions; the router runs it.
	recorder *recorder

	// refresh asks run to read the slot map again (capacity 1).
	refresh chan struct{}

	mu sync.Mutex
	// slots maps each slot to its master's address ("" before the first
	// read, or for a slot no node serves).
	slots  []string
	loaded bool
	nodes  map[string]*shardNode
	// owner is the node subscribing each wanted user's channel; nil when
	// its slot has no master now.
	owner map[string]*shardNode
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

// shardNode is one master's subscription.
type shardNode struct {
	addr   string
	sub    *Subscriber
	users  *userChannels
	client *redis.Client
	stop   context.CancelFunc
}

func newShardRouter(cluster *redis.ClusterClient, cfg Config, opts redis.Options, logger *slog.Logger,
	newNode func(addr string, users *userChannels) (*Subscriber, *redis.Client)) *shardRouter {
	return &shardRouter{
		cluster: cluster,
		newNode: newNode,
		cfg:     cfg,
		opts:    opts,
		logs:    newLogLimiter(1, 5),
		logger:  logger,
		refresh: make(chan struct{}, 1),
		nodes:   make(map[string]*shardNode),
		owner:   make(map[string]*shardNode),
	}
}

// want subscribes username's channel on the node owning its slot.
func (r *shardRouter) want(username string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.route(username)
	r.owner[username] = n
	if n != nil {
		n.users.want(username)
	}
}

// unwant releases username's channel on its node (after the grace).
func (r *shardRouter) unwant(username string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := r.owner[username]; n != nil {
		n.users.unwant(username)
	}
	delete(r.owner, username)
}

// wait returns once username's node has confirmed the channel (see
// userChannels.wait).
func (r *shardRouter) wait(ctx context.Context, username string) error {
	r.mu.Lock()
	n := r.owner[username]
	r.mu.Unlock()
	if n == nil {
		return nil
	}
	return n.users.wait(ctx, username)
}

// route returns the node of username's slot; r.mu is held.
func (r *shardRouter) route(username string) *shardNode {
	if !r.loaded {
		return nil
	}
	return r.nodes[r.slots[history.Slot(channelPrefix+username)]]
}

// lostOn returns the handler of node addr's reports of a channel it
// dropped (its slot moved away): the map is read from that node next.
func (r *shardRouter) lostOn(addr string) func(username string) {
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
func (r *shardRouter) movedOn(addr string) func(slot int, to string, lost int) {
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

func (r *shardRouter) ask() {
	select {
	case r.refresh <- struct{}{}:
	default:
	}
}

// run keeps the subscriptions in line with the slot map until ctx ends;
// it owns the nodes' subscriptions and the recorder.
func (r *shardRouter) run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	if r.recorder != nil {
		wg.Go(func() { r.recorder.run(ctx) })
	}
	defer r.stopAll()
	tick := time.NewTimer(shardRefreshEvery)
	defer tick.Stop()
	backoff := redisx.Backoff{Min: retryMin, Max: r.cfg.RedisRetryMax}
	for {
		if err := r.reload(ctx, &wg); err != nil {
			if ctx.Err() != nil {
				return
			}
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
		every := shardRefreshEvery
		if !r.allConfirmed() {
			every = shardRefreshFailing
		}
		tick.Reset(every)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-r.refresh:
			if !redisx.Sleep(ctx, shardRefreshGap) {
				return
			}
		}
	}
}

// reload reads the slot map and applies it.
func (r *shardRouter) reload(ctx context.Context, wg *sync.WaitGroup) error {
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
func (r *shardRouter) apply(ctx context.Context, wg *sync.WaitGroup, slots []string) (changed bool) {
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
	r.slots, r.loaded, r.moved = slots, true, false
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

// start runs the subscription of the master at addr; r.mu is held.
func (r *shardRouter) start(ctx context.Context, wg *sync.WaitGroup, addr string) *shardNode {
	users := newUserChannels(r.cfg.SubscribeGrace, r.cfg.ProbeTimeout, false)
	users.sharded = true
	sub, client := r.newNode(addr, users)
	sub.onLost = r.lostOn(addr)
	sub.onMoved = r.movedOn(addr)
	sub.onFailure = r.ask
	// Not waited for on stop (r.mu is held): run's WaitGroup does.
	nctx, stop := context.WithCancel(ctx)
	n := &shardNode{addr: addr, sub: sub, users: users, client: client, stop: stop}
	wg.Go(func() {
		defer client.Close()
		sub.run(nctx)
	})
	return n
}

// stopAll stops every node's subscription.
func (r *shardRouter) stopAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for addr, n := range r.nodes {
		n.stop()
		delete(r.nodes, addr)
	}
}

// liveNodes returns the nodes whose subscription Redis confirmed.
func (r *shardRouter) liveNodes() []*shardNode {
	r.mu.Lock()
	defer r.mu.Unlock()
	var live []*shardNode
	for _, n := range r.nodes {
		if n.sub.confirmed.Load() {
			live = append(live, n)
		}
	}
	return live
}

// allConfirmed reports whether every master's subscription is confirmed.
func (r *shardRouter) allConfirmed() bool {
	for _, s := range r.subscriptions() {
		if !s.confirmed.Load() {
			return false
		}
	}
	return true
}

// subscriptions returns the nodes' subscriptions.
func (r *shardRouter) subscriptions() []*Subscriber {
	r.mu.Lock()
	defer r.mu.Unlock()
	subs := make([]*Subscriber, 0, len(r.nodes))
	for _, n := range r.nodes {
		subs = append(subs, n.sub)
	}
	return subs
}

// ready reports whether every master's subscription is live, or why not.
func (r *shardRouter) ready() (bool, string) {
	r.mu.Lock()
	loaded := r.loaded
	r.mu.Unlock()
	if !loaded {
		return false, "waiting for the Redis Cluster slot map"
	}
	for _, s := range r.subscriptions() {
		if ok, why := s.ready(); !ok {
			return false, why
		}
	}
	return true, ""
}

// confirmed reports whether every master's subscription is confirmed.
func (r *shardRouter) confirmed() bool {
	subs := r.subscriptions()
	for _, s := range subs {
		if !s.confirmed.Load() {
			return false
		}
	}
	return len(subs) > 0
}

// lastReceived is when any node's subscription last read anything
// (UnixNano).
func (r *shardRouter) lastReceived() int64 {
	var last int64
	for _, s := range r.subscriptions() {
		last = max(last, s.lastReceived.Load())
	}
	return last
}

// count returns how many user channels the nodes hold for this instance.
func (r *shardRouter) count() int {
	n := 0
	for _, s := range r.subscriptions() {
		n += s.users.count()
	}
	return n
}
