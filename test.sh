#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing
# (redis-server from Debian's packages), then checks formatting, runs
# go vet and the whole suite under the race detector.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi
if ! command -v go >/dev/null 2>&1; then
  echo "test.sh: Go is not installed: install Go 1.26 or newer (https://go.dev/doc/install) and run again" >&2
  exit 1
fi

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing redis-server from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "test.sh: redis-server is missing: run 'sudo apt-get install redis-server' (or your system's equivalent) and run again" >&2
    exit 1
  fi
fi

# The concurrency tests open a few thousand sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

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
go test -race -count=1 "$@" ./...
