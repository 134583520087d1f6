// Package e2e holds fanout's whole-process tests: the daemon binary, built
// once per run, behind real nginx, on real redis-server, Sentinel and
// Cluster, with real Chromium (the *.mjs scripts here, run by Node with
// playwright-core). The tests drive it only through what a user has: HTTP,
// WebSocket, SSE, signals, its log, /admin/stats, /metrics and Redis.
//
// They are the slow tier: under go test -short every one of them skips.
// A tool that is missing (nginx, chromium, node, redis-sentinel) fails the
// full run; ./test.sh installs them.
package e2e
