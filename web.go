package main

import (
	"embed"
	"net/http"
)

// webFiles are the browser client, the console page and the operator page.
//
//go:embed web
var webFiles embed.FS

// The pages load only their own scripts and styles (no inline code, no
// other origin); the console may open WebSockets, the operator page only
// fetches /admin/stats.
const (
	consoleCSP  = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
	operatorCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

// webFile serves one embedded file. A page gets its Content-Security-Policy;
// every file is revalidated, so that a new daemon's assets are picked up.
func webFile(name, csp string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Content-Type-Options", "nosniff")
		if csp != "" {
			h.Set("Content-Security-Policy", csp)
			h.Set("Referrer-Policy", "no-referrer")
			h.Set("X-Frame-Options", "DENY")
		}
		http.ServeFileFS(w, r, webFiles, name)
	})
}

// operatorPage serves the operator page (web/admin.html) at /admin/ on the
// admin listener.
func operatorPage() http.Handler { return webFile("web/admin.html", operatorCSP) }

// operatorAsset serves the operator page's script or stylesheet; like the
// page, they hold no data and need no ADMIN_TOKEN.
func operatorAsset(name string) http.Handler { return webFile("web/"+name, "") }

// webRoutes adds the browser client and, unless CONSOLE=off, the console
// page to the public listener's mux.
func (s *Server) webRoutes(mux *http.ServeMux) {
	client := webFile("web/fanout-client.js", "")
	mux.HandleFunc("GET /fanout-client.js", func(w http.ResponseWriter, r *http.Request) {
		// Pages on any origin may import it as a module (which needs CORS).
		w.Header().Set("Access-Control-Allow-Origin", "*")
		client.ServeHTTP(w, r)
	})
	if !s.cfg.Console {
		return
	}
	mux.Handle("GET /{$}", webFile("web/console.html", consoleCSP))
	mux.Handle("GET /console.js", webFile("web/console.js", ""))
	mux.Handle("GET /console.css", webFile("web/console.css", ""))
}
