package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"fanout/history"
	"fanout/internal/wsconn"
)

// subprotocolV1 is the WebSocket subprotocol of clients that want event
// ids and control messages: each event is {"id":…,"data":…}.
const subprotocolV1 = "fanout.v1"

// Server is the public HTTP surface: the /ws upgrade, /health and /ready.
type Server struct {
	hub      *Hub
	cfg      Config
	logger   *slog.Logger
	stats    *Stats
	auth     *Authenticator
	ready    func() (bool, string)
	upgrader websocket.Upgrader
	// addrLimiter rate-limits /ws requests per client address (nil: off).
	addrLimiter *ipLimiter
	// rejectLog rate-limits the lines for refused requests.
	rejectLog *logLimiter
	// untrustedForwardWarned is set once the TRUSTED_PROXIES warning is out.
	untrustedForwardWarned atomic.Bool
	// users is the Redis subscription: in user mode a new connection
	// waits for its user's channel (subscription.wait).
	users subscription
}

func newServer(hub *Hub, cfg Config, logger *slog.Logger, stats *Stats, auth *Authenticator, ready func() (bool, string)) *Server {
	var addrLimiter *ipLimiter
	if cfg.ConnectRatePerIP > 0 {
		addrLimiter = newIPLimiter(cfg.ConnectRatePerIP, cfg.ConnectBurstPerIP)
	}
	s := &Server{
		hub:         hub,
		cfg:         cfg,
		logger:      logger,
		stats:       stats,
		auth:        auth,
		ready:       ready,
		addrLimiter: addrLimiter,
		upgrader:    wsconn.NewUpgrader(),
		rejectLog:   newLogLimiter(2, 10),
	}
	s.upgrader.Subprotocols = []string{subprotocolV1}
	// The origin was checked, with a clear answer, before Upgrade.
	s.upgrader.CheckOrigin = func(*http.Request) bool { return true }
	// Say what was wrong with the handshake, not just "Bad Request"; the
	// handler logs and counts it.
	s.upgrader.Error = func(w http.ResponseWriter, _ *http.Request, status int, reason error) {
		w.Header().Set("Sec-WebSocket-Version", "13")
		http.Error(w, reason.Error(), status)
	}
	return s
}

// routes returns the handler for the public listener.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", s.handleWebSocket)
	mux.HandleFunc("GET /events", s.handleEvents)
	mux.HandleFunc("POST /ack", s.handleAck)
	mux.HandleFunc("GET /ack", s.handleSeen)
	mux.HandleFunc("OPTIONS /ack", s.handleAckPreflight)
	mux.HandleFunc("GET /health", s.handleHealth)
	mux.HandleFunc("GET /ready", s.handleReady)
	s.webRoutes(mux)
	return mux
}

// handleHealth is the liveness check: 200 while the process serves HTTP,
// whatever the state of Redis.
func (s *Server) handleHealth(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "OK")
}

// handleReady is the readiness check: 200 while the Redis subscription is
// confirmed and self-probes come back, 503 with the reason otherwise.
func (s *Server) handleReady(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if ok, reason := s.ready(); !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %s\n", reason)
		return
	}
	fmt.Fprintln(w, "ready")
}

// handleWebSocket answers /ws: it checks the request (admitRequest), so
// that every refusal is an HTTP status with a one-line reason before any
// upgrade, then upgrades and registers the connection.
func (s *Server) handleWebSocket(w http.ResponseWriter, r *http.Request) {
	// A browser hides why a handshake was refused; fanout-client.js then
	// fetches the same URL, and the CORS headers let a page on an allowed
	// origin read the status, the reason and Retry-After (no credentials:
	// the answer is about the request the page made). The upgrade response
	// ignores them.
	id, req, remote, ok := s.admitRequest(w, r, false)
	if !ok {
		return
	}
	s.upgradeAndRegister(w, r, id, remote, req)
}

// admitRequest runs what /ws and /events do before they answer: it finds
// the client's address, sets the CORS headers for an allowed origin (with
// credentials for EventSource's withCredentials), reads where the events
// start (parseReplayRequest) and runs admit. When ok is false it has
// answered the refusal.
func (s *Server) admitRequest(w http.ResponseWriter, r *http.Request, credentials bool) (id identity, req replayRequest, remote string, ok bool) {
	client := clientAddr(r, s.cfg.TrustedProxies)
	remote = client.String()
	if !client.IsValid() {
		remote = r.RemoteAddr
	}
	s.warnUntrustedForward(r)
	s.corsHeaders(w, r, credentials)
	req, err := parseReplayRequest(r.URL.Query().Get, r.Header.Get("Last-Event-ID"))
	if err != nil {
		s.refuse(w, remote, &refusal{status: http.StatusBadRequest, reason: rejectBadRequest, message: err.Error()})
		return identity{}, req, remote, false
	}
	id, refused := s.admit(r, client)
	if refused != nil {
		s.refuse(w, remote, refused)
		return identity{}, req, remote, false
	}
	// User mode: the connection starts once Redis has confirmed its
	// user's channel, so no event falls between the two.
	if err := s.users.wait(r.Context(), id.username); err != nil {
		s.hub.release(id.username)
		s.refuse(w, remote, &refusal{status: http.StatusServiceUnavailable, reason: rejectNotSubscribed,
			message: err.Error() + "; retry", retryAfter: 1})
		return identity{}, req, remote, false
	}
	return id, req, remote, true
}

// corsHeaders lets a page of an allowed origin read the answer (with
// credentials for EventSource's withCredentials and fetch's "include").
func (s *Server) corsHeaders(w http.ResponseWriter, r *http.Request, credentials bool) {
	if origin := r.Header.Get("Origin"); origin != "" && s.originAllowed(r, origin) {
		w.Header().Set("Access-Control-Allow-Origin", origin)
		if credentials {
			w.Header().Set("Access-Control-Allow-Credentials", "true")
		}
		w.Header().Set("Access-Control-Expose-Headers", "Retry-After")
		w.Header().Add("Vary", "Origin")
	}
}

// refusal is the answer to a /ws request that is not upgraded.
type refusal struct {
	// status is the HTTP status.
	status int
	// reason names the refusal in logs, /admin/stats and metrics.
	reason rejectReason
	// message is the body: one line saying what to change.
	message string
	// retryAfter, when above 0, is sent as Retry-After, in seconds.
	retryAfter int
}

// admit runs the checks of a /ws request in order: shutting down, address
// rate, protected mode, origin, identity (identify), connection limits.
// client is the request's client address (clientAddr). On success the
// identity holds a slot reserved in the hub, which the caller registers or
// releases.
func (s *Server) admit(r *http.Request, client netip.Addr) (identity, *refusal) {
	id, refused := s.identify(r, client)
	if refused != nil {
		return id, refused
	}
	switch err := s.hub.reserve(id.username); err {
	case nil:
		return id, nil
	case errUserLimit:
		return identity{}, &refusal{status: http.StatusTooManyRequests, reason: rejectUserLimit,
			message:    fmt.Sprintf("%q already has %d connections (MAX_CONNECTIONS_PER_USER); close one and retry", id.username, s.cfg.MaxConnectionsPerUser),
			retryAfter: retryAfterUserLimit}
	case errInstanceLimit:
		return identity{}, &refusal{status: http.StatusServiceUnavailable, reason: rejectInstanceLimit,
			message:    err.Error() + "; retry later or on another instance",
			retryAfter: retryAfterInstanceLimit}
	default:
		return identity{}, &refusal{status: http.StatusServiceUnavailable, reason: rejectShuttingDown, message: err.Error()}
	}
}

// identify runs the checks of a request that acts as a user (/ws, /events,
// /ack) up to who it is: shutting down, address rate, protected mode,
// origin, identity (token or username, and the channel it may watch).
func (s *Server) identify(r *http.Request, client netip.Addr) (identity, *refusal) {
	if s.hub.closing.Load() {
		return identity{}, &refusal{status: http.StatusServiceUnavailable, reason: rejectShuttingDown, message: errHubClosed.Error()}
	}
	// A request from this machine is a local client, a load test, or a
	// proxy on this host forwarding for one: one loopback bucket would be
	// one bucket for all of them. The instance and user limits still apply.
	if !fromThisHost(r) {
		if ok, wait := s.addrLimiter.allow(client, time.Now()); !ok {
			return identity{}, &refusal{status: http.StatusTooManyRequests, reason: rejectRateLimited,
				message:    "too many connection attempts from this address (CONNECT_RATE_PER_IP); retry later",
				retryAfter: retryAfterSeconds(wait)}
		}
	}
	if s.cfg.AuthMode == authLoopback {
		if why := protectedModeRefusal(r); why != "" {
			return identity{}, &refusal{status: http.StatusForbidden, reason: rejectProtectedMode, message: why}
		}
	}
	if origin := r.Header.Get("Origin"); origin != "" && !s.originAllowed(r, origin) {
		return identity{}, &refusal{status: http.StatusForbidden, reason: rejectOrigin,
			message: fmt.Sprintf("origin %q is not in ALLOWED_ORIGINS", origin)}
	}
	id, err := s.auth.authenticate(r)
	if err != nil {
		var aerr *authError
		if !errors.As(err, &aerr) {
			aerr = &authError{status: http.StatusUnauthorized, reason: "invalid token"}
		}
		reason := rejectForbidden
		switch aerr.status {
		case http.StatusBadRequest:
			reason = rejectBadRequest
		case http.StatusUnauthorized:
			reason = rejectUnauthorized
		}
		return identity{}, &refusal{status: aerr.status, reason: reason, message: aerr.reason}
	}
	return id, nil
}

// upgradeAndRegister upgrades an admitted request and hands the connection
// to the hub. id's reserved slot is given back here when the upgrade fails,
// and by the hub when register does.
func (s *Server) upgradeAndRegister(w http.ResponseWriter, r *http.Request, id identity, remote string, req replayRequest) {
	// The 101 is held back until the connection is in the hub, so that an
	// event published as soon as the client sees it open reaches it.
	conn, err := wsconn.UpgradeHeld(&s.upgrader, w, r)
	if err != nil {
		// Upgrade has already answered with a 4xx.
		s.hub.release(id.username)
		s.stats.reject(rejectUpgradeFailed)
		s.rejectLog.log(s.logger, slog.LevelInfo, "Rejected WebSocket request", "remote", remote, "reason", rejectUpgradeFailed, "err", err)
		return
	}
	// This goroutine holds the write right until the 101 is out: events
	// broadcast meanwhile queue behind it.
	c := newWSClient(s.hub, conn, id.username, remote)
	c.expires = id.expires
	// Logged before register starts the pumps, so that it always comes
	// before the connection's "Client unregistered" line.
	if id.subject != "" && id.subject != id.username {
		s.logger.Info("New WebSocket connection", "username", id.username, "remote", remote, "subject", id.subject)
	} else {
		s.logger.Info("New WebSocket connection", "username", id.username, "remote", remote)
	}
	if err := s.hub.register(c, req); err != nil {
		s.stats.reject(rejectShuttingDown)
		s.logger.Info("Closing new connection: server shutting down", "username", id.username, "remote", remote)
		_, _ = conn.Flush(time.Now().Add(s.cfg.WriteWait))
		msg := websocket.FormatCloseMessage(disconnectShutdown.code, disconnectShutdown.reason)
		_ = conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(s.cfg.WriteWait))
		_ = conn.Close()
		return
	}
	if _, err := conn.Flush(time.Now().Add(s.cfg.WriteWait)); err != nil {
		c.disconnect(disconnectGone)
	}
	// A write pump takes over what was queued meanwhile.
	c.handOff(false)
}

// refuse answers a /ws request that admit refused with its one-line
// reason, and logs (rate-limited) and counts it.
func (s *Server) refuse(w http.ResponseWriter, remote string, why *refusal) {
	if why.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(why.retryAfter))
	}
	if why.status == http.StatusUnauthorized {
		// Every 401 names its scheme (RFC 9110).
		w.Header().Set("WWW-Authenticate", `Bearer realm="fanout"`)
	}
	s.stats.reject(why.reason)
	s.rejectLog.log(s.logger, slog.LevelInfo, "Rejected WebSocket request", "remote", remote, "status", why.status, "reason", why.reason, "detail", why.message)
	http.Error(w, why.message, why.status)
}

// protectedModeRefusal returns why protected mode refuses r, or "" when r
// comes from a loopback peer that no proxy header places elsewhere.
func protectedModeRefusal(r *http.Request) string {
	const how = "; set JWT_SECRET, JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL (or AUTH_MODE=none to accept anyone)"
	if !peerAddr(r).IsLoopback() {
		return "protected mode: no authentication is configured, so only loopback clients may connect" + how
	}
	if fwd := forwardedForRemote(r.Header); fwd != "" {
		return "protected mode: no authentication is configured, and this request was forwarded for a non-loopback client" + how
	}
	return ""
}

// warnUntrustedForward says once that X-Forwarded-For arrives from a peer
// outside TRUSTED_PROXIES, the usual sign of a proxy left out of it.
func (s *Server) warnUntrustedForward(r *http.Request) {
	if r.Header.Get("X-Forwarded-For") == "" || s.untrustedForwardWarned.Load() {
		return
	}
	peer := peerAddr(r)
	if inPrefixes(peer, s.cfg.TrustedProxies) || !s.untrustedForwardWarned.CompareAndSwap(false, true) {
		return
	}
	s.logger.Warn("X-Forwarded-For ignored: the peer is not in TRUSTED_PROXIES, so per-address limits and logs use the peer's address; list your proxies in TRUSTED_PROXIES",
		"peer", peer.String())
}

// originAllowed reports whether a browser origin may connect: one listed in
// ALLOWED_ORIGINS, or the daemon's own (the console page it serves).
func (s *Server) originAllowed(r *http.Request, origin string) bool {
	if s.cfg.AllowedOrigins == nil {
		return true
	}
	origin = strings.ToLower(strings.TrimRight(origin, "/"))
	if u, err := url.Parse(origin); err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host) {
		return true
	}
	return slices.Contains(s.cfg.AllowedOrigins, origin)
}

// validateUsername applies history's username rule (history.CheckUsername)
// to a connection's username. When it is missing, the message names the
// query parameter on the endpoint the client asked for (/ws or /events).
func validateUsername(username, endpoint string) error {
	if username == "" {
		return fmt.Errorf("missing username: connect to %s?username={username}", endpoint)
	}
	return history.CheckUsername(username)
}
