package main

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"time"
)

const (
	// rateWindow is the span of the rates and the throughput series in
	// /admin/stats.
	rateWindow = time.Minute
	// topUsersCount is how many users /admin/stats lists by connections.
	topUsersCount = 20
	// topUsersMaxAge is how long a top-users list is reused, so that polling
	// /admin/stats walks the user maps at most once a second.
	topUsersMaxAge = time.Second
)

// adminRoutes returns the handler for the admin listener (ADMIN_ADDR): what
// is for operators, not browsers. With ADMIN_TOKEN every request needs it,
// except the operator page itself, which holds no data: it asks for the
// token and sends it with each request.
func (d *daemon) adminRoutes() http.Handler {
	api := http.NewServeMux()
	api.HandleFunc("GET /admin/stats", d.handleStats)
	api.Handle("GET /metrics", d.metrics.handler())
	if d.cfg.Pprof {
		api.HandleFunc("GET /debug/pprof/", pprof.Index)
		api.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		api.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		api.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		api.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	var protected http.Handler = api
	if d.cfg.AdminToken != "" {
		protected = requireBearer(d.cfg.AdminToken, api)
	}
	mux := http.NewServeMux()
	mux.Handle("/", protected)
	mux.Handle("GET /admin/{$}", operatorPage())
	mux.Handle("GET /admin/admin.js", operatorAsset("admin.js"))
	mux.Handle("GET /admin/admin.css", operatorAsset("admin.css"))
	return mux
}

// requireBearer lets through only requests carrying token as a bearer token.
func requireBearer(token string, next http.Handler) http.Handler {
	want := []byte(token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, got, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="fanout admin"`)
			http.Error(w, "admin endpoints need Authorization: Bearer <ADMIN_TOKEN>", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// counterSample is the counters at one instant, for rates.
type counterSample struct {
	at     time.Time
	values map[string]uint64
}

// statsSampler keeps one sample of the counters a second for the last
// rateWindow, so that /admin/stats can report rates and a throughput
// series without touching any connection. Its goroutine is owned by
// daemon.run.
type statsSampler struct {
	stats *Stats
	// mu guards samples, oldest first.
	mu      sync.Mutex
	samples []counterSample
}

func newStatsSampler(stats *Stats) *statsSampler {
	s := &statsSampler{stats: stats}
	s.sample(time.Now())
	return s
}

// run samples every second until ctx ends.
func (s *statsSampler) run(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			s.sample(now)
		}
	}
}

func (s *statsSampler) sample(now time.Time) {
	values := s.stats.counters()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples = append(s.samples, counterSample{at: now, values: values})
	// Keep one sample older than the window, to measure the whole window.
	for len(s.samples) > 2 && now.Sub(s.samples[1].at) >= rateWindow {
		s.samples = s.samples[1:]
	}
}

// throughputPoint is one second of the throughput series.
type throughputPoint struct {
	// Time is the end of the second (Unix seconds).
	Time             int64  `json:"t"`
	MessagesReceived uint64 `json:"messages_received"`
	FramesDelivered  uint64 `json:"frames_delivered"`
}

// window returns the counters now and, for the last rateWindow (or since
// start, when shorter), what each grew by, its span, and the per-second
// series.
func (s *statsSampler) window(now time.Time) (current, growth map[string]uint64, span time.Duration, series []throughputPoint) {
	current = s.stats.counters()
	s.mu.Lock()
	defer s.mu.Unlock()
	// Never nil: /admin/stats shows an empty series as [], not null.
	series = make([]throughputPoint, 0, len(s.samples)-1)
	oldest := s.samples[0]
	span = now.Sub(oldest.at)
	growth = make(map[string]uint64, len(current))
	for name, v := range current {
		growth[name] = v - oldest.values[name]
	}
	for i := 1; i < len(s.samples); i++ {
		prev, cur := s.samples[i-1], s.samples[i]
		series = append(series, throughputPoint{
			Time:             cur.at.Unix(),
			MessagesReceived: cur.values["messages_received"] - prev.values["messages_received"],
			FramesDelivered:  cur.values["frames_delivered"] - prev.values["frames_delivered"],
		})
	}
	return current, growth, span, series
}

// userConnections is one row of the top-users list.
type userConnections struct {
	Username    string `json:"username"`
	Connections int    `json:"connections"`
}

// statsSnapshot is the body of /admin/stats.
type statsSnapshot struct {
	Instance      string            `json:"instance"`
	Version       string            `json:"version"`
	StartedAt     time.Time         `json:"started_at"`
	UptimeSeconds float64           `json:"uptime_seconds"`
	AuthMode      string            `json:"auth_mode"`
	Ready         bool              `json:"ready"`
	NotReady      string            `json:"not_ready,omitempty"`
	Connections   int64             `json:"connections"`
	Users         int64             `json:"users"`
	TopUsers      []userConnections `json:"top_users"`
	// Counters are totals since start; LastMinute is their growth over
	// WindowSeconds (a minute, or the uptime when shorter) and
	// RatesPerSecond that growth per second.
	Counters       map[string]uint64  `json:"counters"`
	Rejected       map[string]uint64  `json:"rejected"`
	WindowSeconds  float64            `json:"window_seconds"`
	LastMinute     map[string]uint64  `json:"last_minute"`
	RatesPerSecond map[string]float64 `json:"rates_per_second"`
	Throughput     []throughputPoint  `json:"throughput"`
	Redis          redisState         `json:"redis"`
	SendQueues     sendQueueState     `json:"send_queues"`
	History        historyState       `json:"history"`
	Subscription   subscriptionState  `json:"subscription"`
}

// subscriptionState is what this instance reads from Redis, in
// /admin/stats.
type subscriptionState struct {
	// Mode is SUBSCRIBE_MODE: pattern or user.
	Mode string `json:"mode"`
	// Channels, in user mode, is the number of user channels Redis holds
	// for this instance.
	Channels int `json:"channels"`
	// RecorderLease, in user mode with history on, is true while this
	// instance holds the recorder lease; RecorderReceived counts the
	// events its recording subscription read (every user's, while it
	// held the lease).
	RecorderLease    bool   `json:"recorder_lease"`
	RecorderReceived uint64 `json:"recorder_received"`
	// SoleRecorder, in pattern mode with history on one Redis, is true
	// while no other instance reads events from it and this one appends
	// them without looking them up (docs/history.md).
	SoleRecorder bool `json:"sole_recorder"`
}

// subscription returns the subscription's state for /admin/stats.
func (d *daemon) subscription() subscriptionState {
	sub := d.sub.status()
	return subscriptionState{Mode: d.cfg.SubscribeMode, Channels: sub.channels, RecorderLease: sub.recorderLease, RecorderReceived: sub.recorderReceived, SoleRecorder: sub.soleRecorder}
}

// redisState is the subscription's health in /admin/stats.
type redisState struct {
	Addr       string `json:"addr"`
	Subscribed bool   `json:"subscribed"`
	Ready      bool   `json:"ready"`
	NotReady   string `json:"not_ready,omitempty"`
	// LastReceivedSecondsAgo is the age of the last message or probe read
	// (-1 before the first).
	LastReceivedSecondsAgo float64 `json:"last_received_seconds_ago"`
	Failures               uint64  `json:"failures"`
	ProbesMissed           uint64  `json:"probes_missed"`
}

// historyState is the history settings and catch-ups in /admin/stats.
type historyState struct {
	Enabled    bool    `json:"enabled"`
	MaxLen     int64   `json:"max_len"`
	TTLSeconds float64 `json:"ttl_seconds"`
	// Catchups is the number of connections catching up right now.
	Catchups int64 `json:"catchups"`
}

// sendQueueState is the send-queue pressure in /admin/stats.
type sendQueueState struct {
	QueuedFrames int64 `json:"queued_frames"`
	QueuedBytes  int64 `json:"queued_bytes"`
	// LimitFrames and LimitBytes are the per-connection bounds.
	LimitFrames int `json:"limit_frames_per_connection"`
	LimitBytes  int `json:"limit_bytes_per_connection"`
}

// handleStats serves the stats as JSON. It reads counters, the sampler's
// window and at most once a second the per-user connection counts; it
// never walks the connections, so polling it under load costs little.
func (d *daemon) handleStats(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	ready, why := d.ready(r.Context())
	subReady, subWhy := d.sub.ready()
	sub := d.sub.status()
	// Totals and growth from one reading, so that they agree.
	counters, growth, span, series := d.sampler.window(now)
	rates := make(map[string]float64, len(growth))
	for name, n := range growth {
		rates[name] = float64(n) / max(span.Seconds(), 1)
	}
	lastAgo := -1.0
	if ns := sub.lastReceived; ns > 0 {
		lastAgo = now.Sub(time.Unix(0, ns)).Seconds()
	}
	rejected := make(map[string]uint64, rejectReasonCount)
	for reason := range rejectReasonCount {
		rejected[reason.String()] = d.stats.Rejected[reason].Load()
	}
	snap := statsSnapshot{
		Instance:       d.instance,
		Version:        version,
		StartedAt:      d.started.UTC(),
		UptimeSeconds:  now.Sub(d.started).Seconds(),
		AuthMode:       d.cfg.AuthMode,
		Ready:          ready,
		NotReady:       why,
		Connections:    d.hub.connections.Load(),
		Users:          d.hub.users.Load(),
		TopUsers:       d.cachedTopUsers(now),
		Counters:       counters,
		Rejected:       rejected,
		WindowSeconds:  span.Seconds(),
		LastMinute:     growth,
		RatesPerSecond: rates,
		Throughput:     series,
		Redis: redisState{
			Addr:                   redisTarget(d.cfg),
			Subscribed:             sub.confirmed,
			Ready:                  subReady,
			NotReady:               subWhy,
			LastReceivedSecondsAgo: lastAgo,
			Failures:               d.stats.RedisFailures.Load(),
			ProbesMissed:           d.stats.ProbesMissed.Load(),
		},
		SendQueues: sendQueueState{
			QueuedFrames: d.hub.queuedFrames.Load(),
			QueuedBytes:  d.hub.queuedBytes.Load(),
			LimitFrames:  d.cfg.SendQueueSize,
			LimitBytes:   d.cfg.SendQueueBytes,
		},
		History: historyState{
			Enabled:    d.cfg.History,
			MaxLen:     d.cfg.Retention.MaxLen,
			TTLSeconds: d.cfg.Retention.TTL.Seconds(),
			Catchups:   d.hub.catchups(),
		},
		Subscription: d.subscription(),
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(snap)
}

// cachedTopUsers returns the top users, recomputed at most once a second.
func (d *daemon) cachedTopUsers(now time.Time) []userConnections {
	d.topMu.Lock()
	defer d.topMu.Unlock()
	if d.top == nil || now.Sub(d.topAt) >= topUsersMaxAge {
		d.top = d.hub.topUsers(topUsersCount)
		d.topAt = now
	}
	return d.top
}
