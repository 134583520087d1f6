package main

import (
	"sync/atomic"

	"github.com/gorilla/websocket"
)

// disconnect is why the daemon ends a connection: the WebSocket close code
// and reason sent to the client, and the counter that counts it.
// A zero code sends no close frame (the peer is already gone).
type disconnect struct {
	code   int
	reason string
	// counter is the row of counterTable for this reason: its name in logs
	// and /admin/stats, its label in fanout_disconnects_total and its field
	// in Stats, which whoever ends the connection increments. Nil for the
	// ends the daemon does not count (shutdown, a peer gone).
	counter *counter
}

// The table of every way the daemon ends a connection.
var (
	// disconnectShutdown tells clients to reconnect to another instance.
	disconnectShutdown = disconnect{code: websocket.CloseGoingAway, reason: "server shutting down"}
	// disconnectSlow ends a connection whose send queue overflowed.
	disconnectSlow = disconnect{code: websocket.CloseTryAgainLater, reason: "send queue full: client too slow",
		counter: &counter{name: "slow_disconnects", metric: disconnectsTotal, label: "slow_client",
			field: func(s *Stats) *atomic.Uint64 { return &s.SlowDisconnects }}}
	// disconnectFlood ends a connection that sends more than a push-only
	// endpoint expects.
	disconnectFlood = disconnect{code: websocket.ClosePolicyViolation, reason: "too many messages from client",
		counter: &counter{name: "flood_disconnects", metric: disconnectsTotal, label: "flood",
			field: func(s *Stats) *atomic.Uint64 { return &s.FloodDisconnects }}}
	// disconnectExpired ends a connection when its token expires; the client
	// reconnects with a fresh token.
	disconnectExpired = disconnect{code: 4001, reason: "token expired",
		counter: &counter{name: "expired_disconnects", metric: disconnectsTotal, label: "token_expired",
			field: func(s *Stats) *atomic.Uint64 { return &s.ExpiredDisconnects }}}
	// disconnectHistoryUnavailable ends a connection whose catch-up could
	// not read its history; the client resumes again from the same id.
	disconnectHistoryUnavailable = disconnect{code: websocket.CloseInternalServerErr, reason: "history unavailable; reconnect with the same last_event_id"}
	// disconnectGone ends a connection whose peer closed it or stopped
	// answering; no close frame is sent.
	disconnectGone = disconnect{code: 0, reason: "connection closed by peer"}
)

// disconnects lists the table above; the counted ones are logged in this
// order.
var disconnects = []*disconnect{&disconnectShutdown, &disconnectSlow, &disconnectFlood, &disconnectExpired, &disconnectHistoryUnavailable, &disconnectGone}
