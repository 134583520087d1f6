package main

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
	"fanout/internal/redisx"
)

const (
	// leaseKey names the instance that records plain PUBLISH events in
	// user mode (recorderLease); readyKey names the holder whose
	// recording subscription Redis has confirmed.
	leaseKey = "fanout:recorder:lease"
	readyKey = "fanout:recorder:ready"
	// leaseTTL is how long the lease outlives its holder; leaseRenew is
	// how often the holder renews it and the others try to take it.
	leaseTTL   = 5 * time.Second
	leaseRenew = time.Second
	// handoverMax bounds how long a stopping holder keeps recording while
	// another instance takes the lease over; handoverOverlap is how long
	// it goes on once the new holder's recording subscription is
	// confirmed, for the batches in flight.
	handoverMax     = 5 * time.Second
	handoverOverlap = 200 * time.Millisecond
)

// leaseScript takes the lease (or the sole recorder's key) when nobody
// holds it, renews it when this instance does, and returns leaseTaken or
// leaseRenewed when this instance holds it, 0 when another does.
var leaseScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 2
end
return 0`)

// What leaseScript returns when this instance holds the key.
const (
	leaseTaken   = 1
	leaseRenewed = 2
)

// releaseScript gives the lease up if this instance holds it.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)

// newRecorderLease returns the recorder lease of instance p.id, with its
// recording subscription.
func newRecorderLease(p subscriptionParts) *recorderLease {
	l := &recorderLease{rdb: p.rdb, owner: p.id, logger: p.logger}
	l.rec = newRecordingSubscription(p)
	// Once the holder's recording subscription is confirmed, a holder
	// handing over knows it records.
	l.rec.conn.onConfirmed = l.markReady
	return l
}

// recordingSubscription is the lease holder's pattern subscription: it
// records every user's events in history and broadcasts none, and answers
// the markers of the other instances' new subscriptions once every event
// read before them is recorded (userChannels, waitSynced). It has its own
// recorder, counters and instance id.
type recordingSubscription struct {
	conn  *pubsubConn
	rec   *recorder
	stats *Stats
}

func newRecordingSubscription(p subscriptionParts) *recordingSubscription {
	stats := &Stats{}
	logger := p.logger.With("role", "recorder")
	rec := newRecorder(p.recordRdb, p.id, history.Layout{}, p.cfg.Retention, func(string, *message) {}, stats, logger)
	conn := newPubsubConn(newInstanceID(), p.rdb, patternChannels{afterLoss: func() {}}, rec, p.cfg, logger, stats)
	conn.answersMarkers = true
	return &recordingSubscription{conn: conn, rec: rec, stats: stats}
}

// run records until ctx ends.
func (r *recordingSubscription) run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { r.rec.run(ctx) })
	r.conn.run(ctx)
}

// recorderLease keeps history whole in SUBSCRIBE_MODE=user. There, an
// instance reads only its connected users' channels, so an event for a
// user connected nowhere would reach no instance and never be recorded.
// One instance at a time holds a lease in Redis and, while it does, runs
// a pattern subscription whose only job is recording (rec, a
// recordingSubscription). Recording is idempotent across
// instances (history.RecordSource), so the holder and the instances that
// deliver the same events agree on every id. When the holder stops, it
// gives the lease up and records on until another instance has taken it;
// when it dies, the lease expires after leaseTTL and another takes it at
// its next try.
type recorderLease struct {
	rdb    redis.UniversalClient
	owner  string
	rec    *recordingSubscription
	logger *slog.Logger
	held   atomic.Bool
	// other is set while another instance holds the lease, as last seen.
	other atomic.Bool
}

// markReady says, once this holder's recording subscription is
// confirmed, that it records: a holder handing over waits for it.
func (l *recorderLease) markReady(ctx context.Context) {
	tctx, cancel := context.WithTimeout(ctx, leaseRenew)
	defer cancel()
	if err := l.rdb.Set(tctx, readyKey, l.owner, 2*leaseTTL).Err(); err != nil {
		l.logger.Warn("Could not mark the recorder lease holder ready", "err", err)
	}
}

// recording reports whether an instance, this one or another, records
// every user's events all along: the lease is held and, when by this
// instance, its recording subscription is confirmed.
func (l *recorderLease) recording() bool {
	return l.other.Load() || l.held.Load() && l.rec.conn.confirmed.Load()
}

// run tries for the lease every leaseRenew until ctx ends, and runs the
// recording subscription while it holds it. It owns that subscription.
func (l *recorderLease) run(ctx context.Context) {
	var recording *leaseRecording
	stop := func() {
		if recording != nil {
			recording.stop()
			recording = nil
		}
		l.held.Store(false)
	}
	defer stop()
	var renewed time.Time
	tick := time.NewTicker(leaseRenew)
	defer tick.Stop()
	for {
		held, err := l.try(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil:
			// Redis is unreachable: the lease may still be this
			// instance's until it would have expired.
			held = recording != nil && time.Since(renewed) < leaseTTL-leaseRenew
		case held:
			renewed = time.Now()
		}
		l.other.Store(err == nil && !held)
		switch {
		case held && recording == nil:
			recording = startLeaseRecording(l.rec)
			l.held.Store(true)
			l.logger.Info("Holding the recorder lease: recording every user's events in history", "key", leaseKey)
		case !held && recording != nil:
			stop()
			l.logger.Info("Recorder lease lost: another instance records", "key", leaseKey)
		}
		select {
		case <-ctx.Done():
			if recording != nil {
				l.handOver()
			}
			return
		case <-tick.C:
		}
	}
}

// leaseRecording is the recording subscription of a lease holder.
type leaseRecording struct {
	cancel context.CancelFunc
	done   sync.WaitGroup
}

func startLeaseRecording(rec *recordingSubscription) *leaseRecording {
	ctx, cancel := context.WithCancel(context.Background())
	r := &leaseRecording{cancel: cancel}
	r.done.Go(func() { rec.run(ctx) })
	return r
}

func (r *leaseRecording) stop() {
	r.cancel()
	r.done.Wait()
}

// try takes or renews the lease.
func (l *recorderLease) try(ctx context.Context) (bool, error) {
	tctx, cancel := context.WithTimeout(ctx, leaseRenew)
	defer cancel()
	n, err := leaseScript.Run(tctx, l.rdb, []string{leaseKey}, l.owner, leaseTTL.Milliseconds()).Int()
	return n == leaseTaken || n == leaseRenewed, err
}

// handOver gives the lease up and waits, recording on, until another
// instance holds it (and a little more, for its subscription), at most
// handoverMax.
func (l *recorderLease) handOver() {
	ctx, cancel := context.WithTimeout(context.Background(), handoverMax)
	defer cancel()
	if err := releaseScript.Run(ctx, l.rdb, []string{leaseKey}, l.owner).Err(); err != nil {
		l.logger.Warn("Could not give the recorder lease up; another instance takes it when it expires", "err", err, "expires_in", leaseTTL)
		return
	}
	for ctx.Err() == nil {
		// Recording on until another instance holds the lease and Redis
		// has confirmed its recording subscription.
		// Two GETs, not one MGET: on a Redis Cluster the keys live in
		// different slots.
		holder, err := l.rdb.Get(ctx, leaseKey).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return
		}
		ready, err := l.rdb.Get(ctx, readyKey).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return
		}
		if holder != "" && holder != l.owner && ready == holder {
			l.logger.Info("Recorder lease handed over")
			redisx.Sleep(ctx, handoverOverlap)
			return
		}
		redisx.Sleep(ctx, 20*time.Millisecond)
	}
	l.logger.Info("No other instance took the recorder lease; the next one to start takes it")
}
