package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// maxUsernameBytes bounds the username query parameter.
const maxUsernameBytes = 128

// Server is the public HTTP surface: the /ws upgrade, /health and /ready.
type Server struct {
	hub      *Hub
	cfg      Config
	logger   *slog.Logger
	stats    *Stats
	ready    func() (bool, string)
	upgrader websocket.Upgrader
	// rejectLog rate-limits the lines for refused requests.
	rejectLog *logLimiter
}

func newServer(hub *Hub, cfg Config, logger *slog.Logger, stats *Stats, ready func() (bool, string)) *Server {
	return &Server{
		hub:    hub,
		cfg:    cfg,
		logger: logger,
		stats:  stats,
		ready:  ready,
		upgrader: websocket.Upgrader{
			// Clients only send pongs and close frames: a small read buffer.
			ReadBufferSize: 1024,
			// Idle connections hold no write buffer; it is taken from the
			// pool for each write.
			WriteBufferSize: 4096,
			WriteBufferPool: &sync.Pool{},
			// The origin was checked, with a clear answer, before Upgrade.
			CheckOrigin: func(*http.Request) bool { return true },
			// Say what was wrong with the handshake, not just "Bad Request";
			// the handler logs and counts it.
			Error: func(w http.ResponseWriter, _ *http.Request, status int, reason error) {
				w.Header().Set("Sec-WebSocket-Version", "13")
				http.Error(w, reason.Error(), status)
			},
		},
		rejectLog: newLogLimiter(2, 10),
	}
}

// routes returns the handler for the public listener.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", s.handleWebSocket)
	mux.HandleFunc("GET /health", s.handleHealth)
	mux.HandleFunc("GET /ready", s.handleReady)
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

// handleWebSocket validates the request, upgrades it and registers the
// connection with the hub.
func (s *Server) handleWebSocket(w http.ResponseWriter, r *http.Request) {
	remote := remoteHost(r)
	username := r.URL.Query().Get("username")
	if err := validateUsername(username); err != nil {
		s.reject(w, r, remote, http.StatusBadRequest, err.Error())
		return
	}
	if origin := r.Header.Get("Origin"); origin != "" && !s.originAllowed(origin) {
		s.reject(w, r, remote, http.StatusForbidden, fmt.Sprintf("origin %q is not in ALLOWED_ORIGINS", origin))
		return
	}
	if s.hub.closing.Load() {
		s.reject(w, r, remote, http.StatusServiceUnavailable, errHubClosed.Error())
		return
	}

	conn, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		// Upgrade has already answered with a 4xx.
		s.stats.ConnectionsRejected.Add(1)
		s.rejectLog.log(s.logger, slog.LevelInfo, "Rejected WebSocket request", "remote", remote, "err", err)
		return
	}
	c := newClient(s.hub, conn, username, remote)
	// Logged before register starts the pumps, so that it always comes
	// before the connection's "Client unregistered" line.
	s.logger.Info("New WebSocket connection", "username", username, "remote", remote)
	if err := s.hub.register(c); err != nil {
		s.stats.ConnectionsRejected.Add(1)
		s.logger.Info("Closing new connection: server shutting down", "username", username, "remote", remote)
		msg := websocket.FormatCloseMessage(disconnectShutdown.code, disconnectShutdown.reason)
		_ = conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(s.cfg.WriteWait))
		_ = conn.Close()
		return
	}
	s.stats.ConnectionsAccepted.Add(1)
}

// reject answers a /ws request that cannot be upgraded with a one-line reason.
func (s *Server) reject(w http.ResponseWriter, r *http.Request, remote string, status int, reason string) {
	s.stats.ConnectionsRejected.Add(1)
	s.rejectLog.log(s.logger, slog.LevelInfo, "Rejected WebSocket request", "remote", remote, "status", status, "reason", reason)
	http.Error(w, reason, status)
}

// originAllowed reports whether a browser origin may connect.
func (s *Server) originAllowed(origin string) bool {
	if s.cfg.AllowedOrigins == nil {
		return true
	}
	return slices.Contains(s.cfg.AllowedOrigins, strings.ToLower(strings.TrimRight(origin, "/")))
}

// validateUsername accepts 1 to 128 bytes of letters, digits and . _ @ + -,
// so a username can never carry a Redis pattern character (* ? [) or the
// channel separator (:).
func validateUsername(username string) error {
	switch {
	case username == "":
		return fmt.Errorf("missing username: connect to /ws?username={username}")
	case len(username) > maxUsernameBytes:
		return fmt.Errorf("username is %d bytes; at most %d are allowed", len(username), maxUsernameBytes)
	}
	for i := 0; i < len(username); i++ {
		if !usernameByte(username[i]) {
			return fmt.Errorf("username has %+q at byte %d; use only ASCII letters, digits and . _ @ + -", username[i:i+1], i)
		}
	}
	return nil
}

func usernameByte(b byte) bool {
	switch {
	case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		return true
	case b == '.', b == '_', b == '@', b == '+', b == '-':
		return true
	}
	return false
}

// remoteHost returns the peer's IP address without the port.
func remoteHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
