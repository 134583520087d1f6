package main

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/presence"
)

// presenceTracker is the hub's view of presence (PRESENCE): the hub tells
// it which users' connection counts changed on this instance, and it keeps
// Redis up to date. A mode chosen at start-up: presenceOff writes nothing.
type presenceTracker interface {
	// changed marks username's connection count on this instance as
	// changed; the hub calls it with the user's shard lock held, so it
	// only records the name.
	changed(username string)
	// run keeps Redis up to date until ctx ends, then takes this instance
	// out of presence (its users get their grace) and returns.
	run(ctx context.Context)
}

// presenceOff is PRESENCE=off.
type presenceOff struct{}

func (presenceOff) changed(string)          {}
func (presenceOff) run(ctx context.Context) {}

// presenceInterval is how often an instance writes presence: how late at
// most a transition is decided. Shorter for a short PRESENCE_TTL (tests).
func presenceInterval(ttl time.Duration) time.Duration {
	return min(time.Second, ttl/4)
}

// presenceTickTimeout bounds one tick's calls to Redis.
const presenceTickTimeout = 2 * time.Second

// minPresenceTTL is the shortest PRESENCE_TTL.
const minPresenceTTL = 2 * time.Second

// redisPresence is PRESENCE=on: once per interval one script call renews
// this instance's entry and sets the counts of the users whose connections
// changed since the last one (presence.Instance.Tick), more calls only
// when over presence.MaxUpdates users changed.
type redisPresence struct {
	rdb    redis.UniversalClient
	inst   presence.Instance
	hub    *Hub
	stats  *Stats
	logger *slog.Logger
	errLog *logLimiter

	mu sync.Mutex
	// dirty are the users whose count changed since the last tick.
	dirty map[string]struct{}
}

func newPresence(cfg Config, rdb redis.UniversalClient, id string, hub *Hub, stats *Stats, logger *slog.Logger) presenceTracker {
	if !cfg.Presence {
		return presenceOff{}
	}
	return &redisPresence{
		rdb: rdb,
		inst: presence.Instance{ID: id, TTL: cfg.PresenceTTL, Interval: presenceInterval(cfg.PresenceTTL),
			Grace: cfg.PresenceGrace, Channel: cfg.PresenceChannel},
		hub: hub, stats: stats, logger: logger,
		errLog: newLogLimiter(1.0/10, 1),
		dirty:  make(map[string]struct{}),
	}
}

func (p *redisPresence) changed(username string) {
	p.mu.Lock()
	p.dirty[username] = struct{}{}
	p.mu.Unlock()
}

func (p *redisPresence) run(ctx context.Context) {
	t := time.NewTicker(p.inst.Interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			tickCtx, cancel := context.WithTimeout(ctx, presenceTickTimeout)
			p.tick(tickCtx, false)
			cancel()
		case <-ctx.Done():
			// The daemon's connections are closed by now: leaving
			// hands every user of this instance its grace.
			leaveCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), presenceTickTimeout)
			p.tick(leaveCtx, true)
			cancel()
			return
		}
	}
}

// tick writes what changed since the last tick. A failed call puts its
// users back, so the next tick writes their counts as they are then.
func (p *redisPresence) tick(ctx context.Context, leaving bool) {
	p.mu.Lock()
	dirty := p.dirty
	p.dirty = make(map[string]struct{}, len(dirty))
	p.mu.Unlock()
	users := slices.Sorted(maps.Keys(dirty))
	for first := true; first || len(users) > 0; first = false {
		n := min(len(users), presence.MaxUpdates)
		batch := make([]presence.Update, n)
		for i, u := range users[:n] {
			batch[i] = presence.Update{Username: u, Connections: p.hub.connectionCount(u)}
		}
		// Leaving takes all of this instance's users out at once: the
		// last call carries it.
		published, err := p.inst.Tick(ctx, p.rdb, batch, leaving && n == len(users))
		if err != nil {
			// The daemon stopping during a tick is no failure: the
			// leaving tick follows, with these users back in dirty.
			if !errors.Is(err, context.Canceled) {
				p.stats.PresenceErrors.Add(1)
				p.errLog.log(p.logger, slog.LevelWarn, "Presence update failed; retrying", "err", err)
			}
			p.mu.Lock()
			for _, u := range users {
				p.dirty[u] = struct{}{}
			}
			p.mu.Unlock()
			return
		}
		p.stats.PresenceTransitions.Add(uint64(published))
		users = users[n:]
	}
}
