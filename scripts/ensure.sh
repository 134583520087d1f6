# Sourced by start.sh and test.sh: puts Go on PATH and installs redis-server
# (and, for the tests, redis-sentinel) when they are missing. $script names
# the caller in messages.

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

# ensure_package COMMAND PACKAGE: installs Debian's PACKAGE when COMMAND is
# neither on PATH nor in /usr/sbin and we are root; otherwise says how to
# install it.
ensure_package() {
  command -v "$1" >/dev/null 2>&1 && return 0
  [ -x "/usr/sbin/$1" ] && return 0
  apt_install "$1" "$2"
}

# ensure_python_module MODULE PACKAGE: installs Debian's PACKAGE when
# Debian's python3 cannot import MODULE (the docs' Python recipes).
ensure_python_module() {
  /usr/bin/python3 -c "import $1" >/dev/null 2>&1 && return 0
  apt_install "python3's $1 module" "$2"
}

# apt_install WHAT PACKAGE: installs Debian's PACKAGE when we are root;
# otherwise says how to install it (WHAT is missing) and exits.
apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "$script: installing $2 from Debian's packages"
    if [ -z "${apt_updated:-}" ]; then
      apt-get update -qq
      apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  else
    echo "$script: $1 is not installed: run 'sudo apt-get install $2' (or your system's equivalent) and run again" >&2
    exit 1
  fi
}

# ensure_redis_server: redis-server, for the daemon or the tests.
ensure_redis_server() { ensure_package redis-server redis-server; }

# ensure_redis_sentinel: redis-sentinel, for the Sentinel tests. Debian's
# package may start a sentinel service on port 26379; it is stopped and
# disabled, since the tests run their own sentinels on free ports.
ensure_redis_sentinel() {
  command -v redis-sentinel >/dev/null 2>&1 && return 0
  ensure_package redis-sentinel redis-sentinel
  if [ "$(id -u)" = 0 ]; then
    if [ -d /run/systemd/system ]; then
      systemctl disable --now redis-sentinel >/dev/null 2>&1 || true
    else
      service redis-sentinel stop >/dev/null 2>&1 || true
    fi
  fi
}
