#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing
# (redis-server, redis-sentinel, nginx, chromium and Node.js from Debian's
# packages, playwright-core from npm), then checks formatting, runs
# go vet and the whole suite under the race detector: the unit and
# integration tests beside the code, and the whole-process tests of e2e/
# (go test -short ./... is the fast inner loop: it skips those).
set -euo pipefail
cd "$(dirname "$0")"

script=test.sh
. scripts/ensure.sh
ensure_go
ensure_redis_server
ensure_redis_sentinel
ensure_package nginx nginx
ensure_package chromium chromium
ensure_package node nodejs
ensure_package npm npm
ensure_python_module redis python3-redis
if [ ! -d e2e/node_modules/playwright-core ]; then
  echo "test.sh: installing playwright-core into e2e/ (npm)"
  npm install --prefix e2e --no-audit --no-fund --loglevel=error >/dev/null
fi

# The concurrency tests open a few thousand sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# Builds without the checkout's path in them, so that a clean clone in a
# new directory reuses what the go build cache holds from any other (the
# race-built test binaries alone took 40 s to build afresh each time, 10 s
# this way). Every go command below, and the daemons the tests build,
# inherit it.
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath"

echo "== gofmt"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
  echo "test.sh: gofmt would change these files (run gofmt -w .):" >&2
  echo "$unformatted" >&2
  exit 1
fi
echo "== go vet"
go vet ./...
echo "== go test -race"
# The whole-process tests (e2e/) mostly wait on timers (failovers, nginx's
# fail_timeout, steady publishers): three at a time keep 2 cores busy
# without starving the timing-sensitive ones.
# The rolling restart runs in the next step instead. Three packages at a
# time (-p 3, go test's default is one per core): the small packages run
# beside the two long ones (the root package and e2e/, about 135 s each)
# instead of after them, 138 s instead of 153 s here.
go test -race -count=1 -p 3 -parallel 3 -skip 'TestRollingRestartOf3InstancesWith3000UsersLosesNothing' "$@" ./...
# Goroutine stack sizes are only true without the race detector, which
# doubles the stack guard: the idle-connection footprint test again. The
# rolling restart's 1001 → back p99 bound (2 s) measures the restart only
# when its 3 000 clients are not slowed by the race detector and by other
# tests on the same cores.
echo "== go test (no race): idle connection footprint, rolling restart"
go test -count=1 -run 'TestIdleConnectionHoldsNoGoroutine|TestAnIdleSSEStreamHoldsNoGoroutine' "$@" .
go test -count=1 -run 'TestRollingRestartOf3InstancesWith3000UsersLosesNothing' "$@" ./e2e/
