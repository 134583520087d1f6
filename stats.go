package main

import "sync/atomic"

// Stats counts what the daemon does. Every field is safe for concurrent use;
// the daemon logs a snapshot at shutdown.
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
	rejectReasonCount
)

// rejectReasonNames are the reasons' names in logs and stats.
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
}

func (r rejectReason) String() string { return rejectReasonNames[r] }

// reject counts one refused /ws request.
func (s *Stats) reject(reason rejectReason) {
	s.ConnectionsRejected.Add(1)
	s.Rejected[reason].Add(1)
}

// counters returns the counters by their log names.
func (s *Stats) counters() map[string]uint64 {
	values := s.logValues()
	m := make(map[string]uint64, len(values)/2)
	for i := 0; i+1 < len(values); i += 2 {
		m[values[i].(string)] = values[i+1].(uint64)
	}
	return m
}

// logValues returns the counters as slog key-value pairs.
func (s *Stats) logValues() []any {
	return []any{
		"connections_accepted", s.ConnectionsAccepted.Load(),
		"connections_rejected", s.ConnectionsRejected.Load(),
		"messages_received", s.MessagesReceived.Load(),
		"messages_invalid", s.MessagesInvalid.Load(),
		"messages_too_large", s.MessagesTooLarge.Load(),
		"frames_delivered", s.FramesDelivered.Load(),
		"frames_dropped", s.FramesDropped.Load(),
		"slow_disconnects", s.SlowDisconnects.Load(),
		"flood_disconnects", s.FloodDisconnects.Load(),
		"expired_disconnects", s.ExpiredDisconnects.Load(),
		"redis_failures", s.RedisFailures.Load(),
		"probes_missed", s.ProbesMissed.Load(),
	}
}
