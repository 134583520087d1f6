#!/usr/bin/env bash
# Runs the fanout daemon in the foreground. When no Redis answers at
# REDIS_HOST:REDIS_PORT and that host is this machine, it first starts a local
# redis-server (installing Debian's package when missing and running as root).
set -euo pipefail
cd "$(dirname "$0")"

# config_error NAME VALUE WHY: the daemon's one line for a wrong variable
# (config.go's configError, VALUE quoted as Go's %q does), exit 2.
config_error() {
  local value=$2
  value=${value//\\/\\\\}
  value=${value//\"/\\\"}
  value=${value//$'\t'/\\t}
  value=${value//$'\n'/\\n}
  value=${value//$'\r'/\\r}
  if [ -z "$value" ]; then
    echo "fanout: configuration: $1: $3" >&2
  else
    echo "fanout: configuration: $1=\"$value\": $3" >&2
  fi
  exit 2
}

# trim VALUE: VALUE without leading and trailing white space, as the daemon
# reads every variable.
trim() {
  local v=$1
  v=${v#"${v%%[![:space:]]*}"}
  v=${v%"${v##*[![:space:]]}"}
  printf '%s' "$v"
}

# The variables this script uses, checked as the daemon checks them
# (config.go: redisOptions) before anything is started or built. With
# REDIS_URL the daemon reads neither, and neither does this script.
# A deployment variable set to nothing is a mistake, as for the daemon
# (config.go: redisDeploymentVariables).
for name in REDIS_URL REDIS_HOST REDIS_SENTINEL_ADDRS REDIS_SENTINEL_MASTER REDIS_CLUSTER_ADDRS; do
  if [ -n "${!name+set}" ] && [ -z "$(trim "${!name}")" ]; then
    config_error "$name" "" "is set but empty: give it a value, or unset it (an empty one is usually a shell variable a compose file, manifest or env file expected and did not get)"
  fi
done
# port_number NAME VALUE: VALUE as a whole number from 1 to 65535, read as
# Go's strconv.Atoi does (a sign, leading zeros) and printed without them;
# anything else is the daemon's configuration error for NAME.
port_number() {
  local digits=${2#+}
  digits=${digits#"${digits%%[!0]*}"}
  if ! [[ "$digits" =~ ^[1-9][0-9]{0,4}$ ]] || [ "$digits" -gt 65535 ]; then
    config_error "$1" "$2" "must be a whole number from 1 to 65535"
  fi
  printf '%s' "$digits"
}
REDIS_HOST=$(trim "${REDIS_HOST:-}")
REDIS_HOST="${REDIS_HOST:-localhost}"
REDIS_PORT=$(trim "${REDIS_PORT:-}")
REDIS_PORT="${REDIS_PORT:-6379}"
if [ -z "$(trim "${REDIS_URL:-}")" ]; then
  # Handed to redis-server when it starts one.
  REDIS_PORT=$(port_number REDIS_PORT "$REDIS_PORT") || exit 2
fi
# The daemon's own port: checked before a Redis is started for it.
if [ -n "$(trim "${PORT:-}")" ]; then
  port_number PORT "$(trim "$PORT")" >/dev/null || exit 2
fi

script=start.sh
. scripts/ensure.sh
ensure_go

# redis_answers HOST PORT: true when something speaking RESP answers PING
# (a +PONG, or an error such as -NOAUTH from a password-protected Redis).
redis_answers() {
  local reply
  reply=$(timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf "PING\r\n" >&3 && IFS= read -r line <&3 && printf "%s" "$line"' _ "$1" "$2" 2>/dev/null) || return 1
  [[ "$reply" == +* || "$reply" == -* ]]
}

is_local() {
  case "$1" in
    localhost|127.*|::1|"[::1]") return 0 ;;
    *) return 1 ;;
  esac
}

if [ -n "${REDIS_URL:-}" ]; then
  echo "start.sh: REDIS_URL is set; not checking for or starting a local Redis"
elif redis_answers "$REDIS_HOST" "$REDIS_PORT"; then
  echo "start.sh: Redis answers at $REDIS_HOST:$REDIS_PORT"
elif ! is_local "$REDIS_HOST"; then
  echo "start.sh: no Redis answers at $REDIS_HOST:$REDIS_PORT; fanout will keep retrying until it does"
else
  ensure_redis_server
  mkdir -p .run
  args=(--port "$REDIS_PORT" --bind "127.0.0.1 -::1" --daemonize yes
        --dir "$PWD/.run" --logfile "$PWD/.run/redis-$REDIS_PORT.log" --pidfile "$PWD/.run/redis-$REDIS_PORT.pid"
        --save "" --appendonly no)
  if [ -n "${REDIS_PASSWORD:-}" ]; then
    args+=(--requirepass "$REDIS_PASSWORD")
  fi
  redis-server "${args[@]}"
  for _ in $(seq 50); do
    redis_answers 127.0.0.1 "$REDIS_PORT" && break
    sleep 0.1
  done
  if ! redis_answers 127.0.0.1 "$REDIS_PORT"; then
    echo "start.sh: the local redis-server did not come up; see .run/redis-$REDIS_PORT.log" >&2
    exit 1
  fi
  echo "start.sh: started a local redis-server on port $REDIS_PORT (log .run/redis-$REDIS_PORT.log; stop it with: kill \$(cat .run/redis-$REDIS_PORT.pid))"
fi

version=$(git describe --always --dirty 2>/dev/null || echo dev)
go build -ldflags "-X main.version=$version" -o fanout .
exec ./fanout
