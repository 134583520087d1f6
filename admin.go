package main

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"
)

// adminRoutes returns the handler for the admin listener (ADMIN_ADDR): what
// is for operators, not browsers. With ADMIN_TOKEN every request needs it.
func (d *daemon) adminRoutes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /admin/stats", d.handleStats)
	if d.cfg.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	if d.cfg.AdminToken == "" {
		return mux
	}
	return requireBearer(d.cfg.AdminToken, mux)
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

// statsSnapshot is the body of /admin/stats.
type statsSnapshot struct {
	Version       string            `json:"version"`
	UptimeSeconds float64           `json:"uptime_seconds"`
	AuthMode      string            `json:"auth_mode"`
	Ready         bool              `json:"ready"`
	NotReady      string            `json:"not_ready,omitempty"`
	Connections   int64             `json:"connections"`
	Users         int64             `json:"users"`
	Counters      map[string]uint64 `json:"counters"`
	Rejected      map[string]uint64 `json:"rejected"`
}

// handleStats serves the counters as JSON. It reads atomics only, so it is
// cheap to poll under load.
func (d *daemon) handleStats(w http.ResponseWriter, r *http.Request) {
	ready, why := d.ready(r.Context())
	snap := statsSnapshot{
		Version:       version,
		UptimeSeconds: time.Since(d.started).Seconds(),
		AuthMode:      d.cfg.AuthMode,
		Ready:         ready,
		NotReady:      why,
		Connections:   d.hub.connections.Load(),
		Users:         d.hub.users.Load(),
		Counters:      map[string]uint64{},
		Rejected:      map[string]uint64{},
	}
	values := d.stats.logValues()
	for i := 0; i+1 < len(values); i += 2 {
		snap.Counters[values[i].(string)] = values[i+1].(uint64)
	}
	for reason := range rejectReasonCount {
		snap.Rejected[reason.String()] = d.stats.Rejected[reason].Load()
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(snap)
}
