package main

import (
	"embed"
	"net/http"
)

// webFiles are the browser client, the console page and the operator page.
//
//go:embed web
var webFiles embed.FS

// operatorPage serves the operator page (web/admin.html) at /admin/ on the
// admin listener.
func operatorPage() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, webFiles, "web/admin.html")
	})
}

// webRoutes adds the browser client and, unless CONSOLE=off, the console
// page to the public listener's mux.
func (s *Server) webRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /fanout-client.js", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, webFiles, "web/fanout-client.js")
	})
}
