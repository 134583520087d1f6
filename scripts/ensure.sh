# Sourced by start.sh and test.sh: puts Go on PATH and installs redis-server
# when they are missing. $script names the caller in messages.

# ensure_go: Go 1.26+ must be installed; /usr/local/go is used when it is
# not on PATH.
ensure_go() {
  if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
    export PATH="$PATH:/usr/local/go/bin"
  fi
  if ! command -v go >/dev/null 2>&1; then
    echo "$script: Go is not installed: install Go 1.26 or newer (https://go.dev/doc/install) and run again" >&2
    exit 1
  fi
}

# ensure_redis_server: installs Debian's redis-server package when the
# binary is missing and we are root; otherwise says how to install it.
ensure_redis_server() {
  command -v redis-server >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "$script: installing redis-server from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "$script: redis-server is not installed: run 'sudo apt-get install redis-server' (or your system's equivalent) and run again" >&2
    exit 1
  fi
}
