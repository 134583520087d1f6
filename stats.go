package main

import (
	"slices"
	"sync/atomic"
)

// Stats counts what the daemon does. Every field is safe for concurrent use.
// counterTable names each counter in logs, /admin/stats and /metrics; the
// daemon logs a snapshot at shutdown.
type Stats struct {
	// ConnectionsAccepted counts WebSocket upgrades that were registered.
	ConnectionsAccepted atomic.Uint64
	// ConnectionsRejected counts /ws requests refused before the upgrade;
	// Rejected splits it by reason.
	ConnectionsRejected atomic.Uint64
	Rejected            [rejectReasonCount]atomic.Uint64
	// MessagesReceived counts payloads read from user channels in Redis.
	MessagesReceived atomic.Uint64
	// MessagesInvalid counts payloads dropped for being empty or not JSON.
	MessagesInvalid atomic.Uint64
	// MessagesTooLarge counts payloads dropped for exceeding MAX_MESSAGE_BYTES.
	MessagesTooLarge atomic.Uint64
	// FramesDelivered counts text frames written to sockets.
	FramesDelivered atomic.Uint64
	// FramesDropped counts messages not queued for a connection because it
	// was too slow or already closing.
	FramesDropped atomic.Uint64
	// SlowDisconnects counts connections closed because their send queue
	// overflowed.
	SlowDisconnects atomic.Uint64
	// FloodDisconnects counts connections closed for sending too much.
	FloodDisconnects atomic.Uint64
	// ExpiredDisconnects counts connections closed when their token expired.
	ExpiredDisconnects atomic.Uint64
	// RedisFailures counts Redis subscription sessions that ended in an error.
	RedisFailures atomic.Uint64
	// ProbesMissed counts self-probes that did not come back in time.
	ProbesMissed atomic.Uint64
	// HistoryRecorded counts events this instance appended to a history
	// (the others found them there); HistoryErrors counts events delivered
	// without an id because recording them failed.
	HistoryRecorded atomic.Uint64
	HistoryErrors   atomic.Uint64
	// HistoryReplayed counts events sent from history to resuming or
	// late-joining connections; HistoryResyncs the resync controls sent.
	HistoryReplayed atomic.Uint64
	HistoryResyncs  atomic.Uint64
	// ResubscribeCatchups counts open connections caught up on the
	// history once a lost subscription was back (Hub.catchUpAfterLoss).
	ResubscribeCatchups atomic.Uint64
	// PresenceTransitions counts the online and offline transitions this
	// instance published; PresenceErrors its presence ticks that failed
	// (tried again at the next tick).
	PresenceTransitions atomic.Uint64
	PresenceErrors      atomic.Uint64
	// ReceiptsRecorded counts acks that moved their user's seen id;
	// ReceiptsIgnored those that were not ids, not in the user's history,
	// or came with HISTORY=off; ReceiptsErrors the writes that failed
	// (tried again a second later).
	ReceiptsRecorded atomic.Uint64
	ReceiptsIgnored  atomic.Uint64
	ReceiptsErrors   atomic.Uint64
}

// rejectReason is why a /ws request was refused, as counted.
type rejectReason int

const (
	rejectBadRequest rejectReason = iota
	rejectUnauthorized
	rejectForbidden
	rejectOrigin
	rejectProtectedMode
	rejectRateLimited
	rejectUserLimit
	rejectInstanceLimit
	rejectShuttingDown
	rejectUpgradeFailed
	rejectNotSubscribed
	rejectReasonCount
)

// rejectReasonNames are the reasons' names in logs, in /admin/stats's
// rejected and as the reason label of fanout_connections_rejected_total.
var rejectReasonNames = [rejectReasonCount]string{
	rejectBadRequest:    "bad_request",
	rejectUnauthorized:  "unauthorized",
	rejectForbidden:     "forbidden",
	rejectOrigin:        "origin",
	rejectProtectedMode: "protected_mode",
	rejectRateLimited:   "rate_limited",
	rejectUserLimit:     "user_limit",
	rejectInstanceLimit: "instance_limit",
	rejectShuttingDown:  "shutting_down",
	rejectUpgradeFailed: "upgrade_failed",
	rejectNotSubscribed: "not_subscribed",
}

func (r rejectReason) String() string { return rejectReasonNames[r] }

// reject counts one refused /ws request.
func (s *Stats) reject(reason rejectReason) {
	s.ConnectionsRejected.Add(1)
	s.Rejected[reason].Add(1)
}

// counterMetric is a Prometheus counter made of one or more of the
// daemon's counters. A metric of several counters tells them apart by the
// value of its one label.
type counterMetric struct {
	// name and help are the metric's name and help text in /metrics.
	name, help string
	// labelName is the label telling its counters apart, or "" for a
	// metric of one counter.
	labelName string
}

// The counter metrics that several counters share.
var (
	connectionsRejectedTotal = &counterMetric{name: "fanout_connections_rejected_total",
		help: "WebSocket requests refused before the upgrade, by reason.", labelName: "reason"}
	messagesDroppedTotal = &counterMetric{name: "fanout_messages_dropped_total",
		help:      "Messages not delivered, by reason: invalid_json (empty or not JSON) and too_large are published payloads dropped whole; slow_client counts frames not queued for a connection that was too slow or closing.",
		labelName: "reason"}
	disconnectsTotal = &counterMetric{name: "fanout_disconnects_total",
		help: "Connections the daemon closed, by reason: slow_client (1013), flood (1008), token_expired (4001).", labelName: "reason"}
)

// counter is one of the daemon's counters: the atomic in Stats that counts
// it and its names outside the process.
type counter struct {
	// name is its key in the "Stopped" log line and in /admin/stats
	// (counters, last_minute, rates_per_second).
	name string
	// metric is the Prometheus counter it is exported as, and label its
	// value of the metric's label when the metric has one. A nil metric
	// means the counter is exported only split by reason (see
	// connections_rejected).
	metric *counterMetric
	label  string
	// field reaches the counter in Stats.
	field func(*Stats) *atomic.Uint64
}

// counterTable is every counter, in the order they are logged: the log
// line, /admin/stats and /metrics are made from it. Adding a counter is a
// field in Stats and a row here (a disconnect's counter is a row in the
// disconnect table instead).
var counterTable = slices.Concat([]counter{
	{name: "connections_accepted", field: func(s *Stats) *atomic.Uint64 { return &s.ConnectionsAccepted },
		metric: &counterMetric{name: "fanout_connections_accepted_total", help: "WebSocket connections accepted."}},
	// Exported by reason, as fanout_connections_rejected_total: its
	// series are Rejected, from the refusal table, and sum to it.
	{name: "connections_rejected", field: func(s *Stats) *atomic.Uint64 { return &s.ConnectionsRejected }},
	{name: "messages_received", field: func(s *Stats) *atomic.Uint64 { return &s.MessagesReceived },
		metric: &counterMetric{name: "fanout_messages_received_total", help: "Messages read from user channels in Redis."}},
	{name: "messages_invalid", field: func(s *Stats) *atomic.Uint64 { return &s.MessagesInvalid },
		metric: messagesDroppedTotal, label: "invalid_json"},
	{name: "messages_too_large", field: func(s *Stats) *atomic.Uint64 { return &s.MessagesTooLarge },
		metric: messagesDroppedTotal, label: "too_large"},
	{name: "frames_delivered", field: func(s *Stats) *atomic.Uint64 { return &s.FramesDelivered },
		metric: &counterMetric{name: "fanout_frames_delivered_total", help: "Frames written to WebSocket connections."}},
	{name: "frames_dropped", field: func(s *Stats) *atomic.Uint64 { return &s.FramesDropped },
		metric: messagesDroppedTotal, label: "slow_client"},
}, disconnectCounters(), []counter{
	{name: "redis_failures", field: func(s *Stats) *atomic.Uint64 { return &s.RedisFailures },
		metric: &counterMetric{name: "fanout_redis_reconnects_total", help: "Redis subscription sessions that ended in an error and were retried."}},
	{name: "probes_missed", field: func(s *Stats) *atomic.Uint64 { return &s.ProbesMissed },
		metric: &counterMetric{name: "fanout_redis_probes_missed_total", help: "Self-probes that did not come back in time (each forces a resubscribe)."}},
	{name: "history_recorded", field: func(s *Stats) *atomic.Uint64 { return &s.HistoryRecorded },
		metric: &counterMetric{name: "fanout_history_recorded_total", help: "Events this instance appended to a user's history (the other instances found them there)."}},
	{name: "history_errors", field: func(s *Stats) *atomic.Uint64 { return &s.HistoryErrors },
		metric: &counterMetric{name: "fanout_history_errors_total", help: "Events delivered without an id because recording them in Redis failed."}},
	{name: "history_replayed", field: func(s *Stats) *atomic.Uint64 { return &s.HistoryReplayed },
		metric: &counterMetric{name: "fanout_history_replayed_total", help: "Events sent from history to resuming or late-joining connections."}},
	{name: "history_resyncs", field: func(s *Stats) *atomic.Uint64 { return &s.HistoryResyncs },
		metric: &counterMetric{name: "fanout_history_resyncs_total", help: "Resync controls sent: the last event id a client resumed from was trimmed, malformed or unknown."}},
	{name: "resubscribe_catchups", field: func(s *Stats) *atomic.Uint64 { return &s.ResubscribeCatchups },
		metric: &counterMetric{name: "fanout_resubscribe_catchups_total", help: "Open connections caught up on the history after their user's Redis subscription was lost and back (failover, slot moved)."}},
	{name: "presence_transitions", field: func(s *Stats) *atomic.Uint64 { return &s.PresenceTransitions },
		metric: &counterMetric{name: "fanout_presence_transitions_total", help: "Presence transitions (online, offline) this instance published on PRESENCE_CHANNEL."}},
	{name: "presence_errors", field: func(s *Stats) *atomic.Uint64 { return &s.PresenceErrors },
		metric: &counterMetric{name: "fanout_presence_errors_total", help: "Presence updates to Redis that failed (tried again a second later)."}},
	{name: "receipts_recorded", field: func(s *Stats) *atomic.Uint64 { return &s.ReceiptsRecorded },
		metric: &counterMetric{name: "fanout_receipts_recorded_total", help: "Acks that moved their user's seen id (read receipts)."}},
	{name: "receipts_ignored", field: func(s *Stats) *atomic.Uint64 { return &s.ReceiptsIgnored },
		metric: &counterMetric{name: "fanout_receipts_ignored_total", help: "Acks ignored: not an event id, not in the user's history, or HISTORY=off."}},
	{name: "receipts_errors", field: func(s *Stats) *atomic.Uint64 { return &s.ReceiptsErrors },
		metric: &counterMetric{name: "fanout_receipts_errors_total", help: "Read-receipt writes to Redis that failed (tried again a second later)."}},
})

// disconnectCounters returns the counters of the disconnect table, in its
// order.
func disconnectCounters() []counter {
	var counters []counter
	for _, d := range disconnects {
		if d.counter != nil {
			counters = append(counters, *d.counter)
		}
	}
	return counters
}

// counterMetrics returns every counter metric once, in the order of
// counterTable, then fanout_connections_rejected_total.
func counterMetrics() []*counterMetric {
	var metrics []*counterMetric
	for _, c := range counterTable {
		if c.metric != nil && !slices.Contains(metrics, c.metric) {
			metrics = append(metrics, c.metric)
		}
	}
	return append(metrics, connectionsRejectedTotal)
}

// labels returns the counter's label values for its metric.
func (c *counter) labels() []string {
	if c.label == "" {
		return nil
	}
	return []string{c.label}
}

// counters returns the counters by their log names.
func (s *Stats) counters() map[string]uint64 {
	m := make(map[string]uint64, len(counterTable))
	for _, c := range counterTable {
		m[c.name] = c.field(s).Load()
	}
	return m
}

// logValues returns the counters as slog key-value pairs.
func (s *Stats) logValues() []any {
	values := make([]any, 0, 2*len(counterTable))
	for _, c := range counterTable {
		values = append(values, c.name, c.field(s).Load())
	}
	return values
}
