package main

import "github.com/gorilla/websocket"

// disconnect is why the daemon ends a connection: the WebSocket close code
// and reason sent to the client, and the word logged and counted for it.
// A zero code sends no close frame (the peer is already gone).
type disconnect struct {
	code   int
	reason string
}

// The table of every way the daemon ends a connection.
var (
	// disconnectShutdown tells clients to reconnect to another instance.
	disconnectShutdown = disconnect{websocket.CloseGoingAway, "server shutting down"}
	// disconnectSlow ends a connection whose send queue overflowed.
	disconnectSlow = disconnect{websocket.CloseTryAgainLater, "send queue full: client too slow"}
	// disconnectFlood ends a connection that sends more than a push-only
	// endpoint expects.
	disconnectFlood = disconnect{websocket.ClosePolicyViolation, "too many messages from client"}
	// disconnectExpired ends a connection when its token expires; the client
	// reconnects with a fresh token.
	disconnectExpired = disconnect{4001, "token expired"}
	// disconnectGone ends a connection whose peer closed it or stopped
	// answering; no close frame is sent.
	disconnectGone = disconnect{0, "connection closed by peer"}
)
