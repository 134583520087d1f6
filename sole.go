package main

import (
	"context"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
)

const (
	// soleRenew is how often the sole recorder checks that no other
	// instance reads events and renews its hold; soleTTL is how long the
	// hold outlives an instance that stopped renewing it.
	soleRenew = time.Second
	soleTTL   = 3 * time.Second
	// solePrefix starts the marker a new holder publishes on its own
	// probe channel (inbound.sole).
	solePrefix = "sole:"
)

// instanceName matches the Redis client name of a fanout instance (main.go:
// "fanout-" and its id).
var instanceName = regexp.MustCompile(`^fanout-[0-9a-f]{16}$`)

// soleRecorder lets a pattern-mode instance that is the only one reading
// events from its Redis append plain PUBLISH events without looking for
// them first (history.AppendSource): nobody else can have appended them.
// That saves Redis most of what recording costs, in the common deployment
// of one instance per Redis.
//
// Every soleRenew it lists Redis's pub/sub clients (CLIENT LIST TYPE
// pubsub). With none but its own (a client named like another instance,
// or unnamed, as instances before the names were, counts as an instance;
// other applications' named clients do not) it takes or renews
// history.SoloKey, for soleTTL; otherwise it gives the key up. Both record
// scripts read the key, so the safety holds in Redis, whatever the
// timing: AppendSource appends only while this instance holds it, and
// every other instance's RecordSource appends nothing while it does (it
// finds this instance's entries, or waits for them). Each time it takes
// the key it starts a generation and publishes that generation's marker
// on its probe channel; the recorder appends alone only the events it
// reads after the marker, which were published while no other instance
// read events (one that did may have appended those before: they are
// looked up). Another instance that starts is seen at the next check, so
// its first events wait up to soleRenew for this one to append them or
// give the key up.
//
// It runs only where it can: pattern mode, HISTORY=on, one Redis (not a
// Cluster: the key and the users' histories are in different slots), the
// instance's own client name, and CLIENT LIST allowed.
type soleRecorder struct {
	rdb    redis.UniversalClient
	owner  string
	name   string
	conn   *pubsubConn
	logger *slog.Logger
	// held is the generation while this instance holds the key, 0 when
	// it does not.
	held atomic.Uint64
	// gen counts the generations; listErr says CLIENT LIST failed last
	// time (logged once per run of failures). Owned by run.
	gen     uint64
	listErr bool
}

// newSoleRecorder returns the sole recorder of instance owner, whose
// Redis connections are named name, reading events through conn; nil when
// the instance cannot tell its connections apart from another instance's
// (an operator's client name).
func newSoleRecorder(rdb redis.UniversalClient, owner, name string, conn *pubsubConn, logger *slog.Logger) *soleRecorder {
	if name != "fanout-"+owner {
		return nil
	}
	return &soleRecorder{rdb: rdb, owner: owner, name: name, conn: conn, logger: logger}
}

// run checks every soleRenew until ctx ends, then gives the key up.
func (s *soleRecorder) run(ctx context.Context) {
	tick := time.NewTicker(soleRenew)
	defer tick.Stop()
	for {
		s.check(ctx)
		select {
		case <-ctx.Done():
			rctx, cancel := context.WithTimeout(context.Background(), soleRenew)
			defer cancel()
			s.release(rctx)
			return
		case <-tick.C:
		}
	}
}

// check takes or renews the key when no other instance reads events, and
// gives it up otherwise.
func (s *soleRecorder) check(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, soleRenew)
	defer cancel()
	if !s.conn.confirmed.Load() {
		// Not reading events: another instance must be free to append.
		s.release(ctx)
		return
	}
	alone, err := s.alone(ctx)
	if err != nil {
		if !s.listErr && ctx.Err() == nil {
			s.logger.Warn("Cannot list Redis's pub/sub clients; every event is looked up before it is recorded", "err", err)
		}
		s.listErr = true
		s.release(ctx)
		return
	}
	s.listErr = false
	if !alone {
		s.release(ctx)
		return
	}
	n, err := leaseScript.Run(ctx, s.rdb, []string{history.SoloKey}, s.owner, soleTTL.Milliseconds()).Int()
	switch {
	case err != nil || n == 0:
		// Unknown, or another instance's for a moment more: the scripts
		// read the key, so this only stops trying.
		s.held.Store(0)
	case n == leaseTaken || s.held.Load() == 0:
		s.gen++
		s.held.Store(s.gen)
		if err := s.rdb.Publish(ctx, s.conn.probeChannel, solePrefix+strconv.FormatUint(s.gen, 10)).Err(); err != nil {
			s.release(ctx)
			return
		}
		s.logger.Info("No other instance reads events from this Redis: appending events without looking them up", "key", history.SoloKey)
	}
}

// release gives the key up if this instance holds it.
func (s *soleRecorder) release(ctx context.Context) {
	if s.held.Swap(0) == 0 {
		return
	}
	if err := releaseScript.Run(ctx, s.rdb, []string{history.SoloKey}, s.owner).Err(); err != nil {
		s.logger.Warn("Could not give the sole recorder key up; it expires", "key", history.SoloKey, "err", err, "expires_in", soleTTL)
		return
	}
	s.logger.Info("Another instance reads events from this Redis, or this one does not: looking every event up before recording it", "key", history.SoloKey)
}

// alone reports whether no pub/sub client of Redis but this instance's
// may be another instance.
func (s *soleRecorder) alone(ctx context.Context) (bool, error) {
	list, err := s.rdb.Do(ctx, "CLIENT", "LIST", "TYPE", "pubsub").Text()
	if err != nil {
		return false, err
	}
	for line := range strings.SplitSeq(list, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		name := clientField(line, "name")
		if name != s.name && (name == "" || instanceName.MatchString(name)) {
			return false, nil
		}
	}
	return true, nil
}

// clientField returns the value of field in a CLIENT LIST line.
func clientField(line, field string) string {
	for kv := range strings.FieldsSeq(line) {
		if v, ok := strings.CutPrefix(kv, field+"="); ok {
			return v
		}
	}
	return ""
}
