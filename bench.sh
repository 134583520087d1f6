#!/usr/bin/env bash
# bench.sh: run the fanout load-generator scenarios (cmd/fanout-bench)
# against a fresh daemon each, all on loopback.
#
#   ./bench.sh                 # every scenario: S1 S1-max S2 S2-history-off S3
#                              # S3-history-off S4 connect storm
#   ./bench.sh S2 S3           # a subset
#   QUICK=1 ./bench.sh         # everything scaled down ~10x (smoke run)
#   PERF_DIR=/tmp/p ./bench.sh S3   # also record the daemon with perf
#                                   # (linux-perf; perf report -i /tmp/p/S3.perf.data)
#   DAEMON_ENV='GOMAXPROCS=1' ./bench.sh S2   # extra environment for the daemon
#
# It raises the soft open-files limit to the hard one, builds the daemon and
# the bench into a temporary directory, starts its own redis-server on a free
# loopback port (no persistence), and for each scenario starts the daemon on
# a free port with LOG_LEVEL=warn (info logs a line per connection),
# CONNECT_RATE_PER_IP=0 and MAX_CONNECTIONS_PER_USER=0 (one client address
# opens thousands of connections) and ADMIN_ADDR=off, waits for /ready, runs
# fanout-bench with -pid set to the daemon, and stops the daemon. Redis is
# emptied (FLUSHALL) before each scenario, so each one's history starts
# empty. Everything it started is stopped on exit. Reports (table +
# BENCH_JSON line) go to stdout; a summary table of all scenarios is printed
# at the end.
#
# History: the daemon runs with its defaults (HISTORY=on), except in
# S2-history-off and S3-history-off (HISTORY=off); S2, S3 and their -off
# twins use fanout.v1 clients, so the pairs differ only by the history.
# storm: 5 000 clients of 5 000 users resume at once, 50 events behind,
# while 200 other users get 500 events/s (cmd/fanout-bench/README.md).
set -euo pipefail
cd "$(dirname "$0")"

ALL=(S1 S1-max S2 S2-history-off S3 S3-history-off S4 connect storm)
if (($# == 0)); then set -- "${ALL[@]}"; fi
for s in "$@"; do
  case " ${ALL[*]} " in *" $s "*) ;; *) echo "bench.sh: unknown scenario $s (known: ${ALL[*]})" >&2; exit 2 ;; esac
done

# Installs what is missing, as test.sh does (Debian packages, as root).
script=bench.sh
. scripts/ensure.sh
ensure_go
ensure_redis_server
ensure_package curl curl

ulimit -n "$(ulimit -Hn)"
QUICK=${QUICK:-0}
# Each source address gives ~28 000 client ports; scenarios follow each
# other within TIME_WAIT (60 s), so spread the sockets over 8 addresses.
SOURCES=${SOURCES:-8}
TIMEOUT=${TIMEOUT:-60s}

WORK=$(mktemp -d /tmp/fanout-bench.XXXXXX)
REDIS_PID="" DAEMON_PID=""
cleanup() {
  [[ -n $DAEMON_PID ]] && kill -TERM "$DAEMON_PID" 2>/dev/null && wait_gone "$DAEMON_PID" 15
  [[ -n $REDIS_PID ]] && kill -TERM "$REDIS_PID" 2>/dev/null && wait_gone "$REDIS_PID" 5
  rm -rf "$WORK"
}
# wait_gone PID SECONDS: wait for PID to exit, SIGKILL it after SECONDS.
wait_gone() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port: a loopback TCP port nobody listens on, below the ephemeral
# range so client sockets never take it.
free_port() {
  local p i
  for ((i = 0; i < 100; i++)); do
    p=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  echo "bench.sh: no free port" >&2; exit 1
}

echo "building daemon and fanout-bench..."
go build -o "$WORK/fanout" .
go build -o "$WORK/fanout-bench" ./cmd/fanout-bench

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --maxclients 10000 --daemonize no --logfile "$WORK/redis.log" &
REDIS_PID=$!
for ((i = 0; i < 50; i++)); do
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis-cli -p "$REDIS_PORT" ping >/dev/null || { echo "bench.sh: redis did not start" >&2; cat "$WORK/redis.log" >&2; exit 1; }

# start_daemon S: a fresh daemon for scenario S.
start_daemon() {
  DAEMON_PORT=$(free_port)
  PORT=$DAEMON_PORT LISTEN_HOST=127.0.0.1 REDIS_HOST=127.0.0.1 REDIS_PORT=$REDIS_PORT \
    LOG_LEVEL=warn CONNECT_RATE_PER_IP=0 MAX_CONNECTIONS_PER_USER=0 ADMIN_ADDR=off \
    env $(scenario_env "$1") ${DAEMON_ENV:-} "$WORK/fanout" >"$WORK/daemon.log" 2>&1 &
  DAEMON_PID=$!
  for ((i = 0; i < 150; i++)); do
    curl -fs "http://127.0.0.1:$DAEMON_PORT/ready" >/dev/null 2>&1 && return 0
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench.sh: daemon not ready" >&2; tail -20 "$WORK/daemon.log" >&2; exit 1
}

stop_daemon() {
  kill -TERM "$DAEMON_PID" 2>/dev/null || true
  wait_gone "$DAEMON_PID" 15
  wait "$DAEMON_PID" 2>/dev/null || true
  DAEMON_PID=""
  # Warnings and errors other than the protected-mode notice.
  local log
  log=$(grep -v 'PROTECTED MODE' "$WORK/daemon.log" | tail -5 || true)
  if [[ -n $log ]]; then
    echo "  daemon log (warnings and errors, last 5 lines):"
    echo "$log" | sed 's/^/    /'
  fi
}

# q FULL QUICK: FULL, or QUICK when QUICK=1.
q() { if [[ $QUICK == 1 ]]; then echo "$2"; else echo "$1"; fi; }

scenario_args() {
  case $1 in
    # The idle scenarios measure at steady state: pings every 2 s
    # (scenario_env) and a 5 s settle, so every connection has answered
    # at least two pings when RSS is read.
    S1) echo "-users $(q 9500 950) -conns-per-user 2 -settle 5s" ;;
    S1-max) echo "-users $(q 19500 1950) -conns-per-user 1 -settle 5s" ;;
    S2 | S2-history-off) echo "-users $(q 2000 200) -conns-per-user 2 -events $(q 20000 2000) -rate $(q 2000 500) -payload 256 -settle 1s -subprotocol fanout.v1" ;;
    S3 | S3-history-off) echo "-users $(q 2000 200) -conns-per-user 2 -events $(q 50000 5000) -rate 0 -inflight 1000 -payload 256 -settle 1s -subprotocol fanout.v1" ;;
    S4) echo "-users 1 -conns-per-user $(q 5000 500) -events $(q 500 50) -rate 0 -inflight 1000 -then-events $(q 300 30) -then-rate 10 -payload 256 -settle 1s" ;;
    connect) echo "-users $(q 19000 1900) -conns-per-user 1 -settle 1s -dial-concurrency 256" ;;
    # 5 000 resuming clients, one per user (each catch-up its own Redis
    # read); live users u0..u199, one connection each, 500 events/s.
    storm) echo "-storm-clients $(q 5000 500) -storm-missed 50 -users $(q 200 20) -conns-per-user 1 -rate $(q 500 100) -payload 256 -settle 1s -storm-baseline $(q 3s 1s) -storm-after 1s" ;;
  esac
}

# scenario_env S: the daemon's extra settings for scenario S.
scenario_env() {
  case $1 in
    S1 | S1-max) echo "PING_INTERVAL=2s PONG_WAIT=6s" ;;
    S2-history-off | S3-history-off) echo "HISTORY=off" ;;
  esac
}

# daemon_settings S: what the daemon of scenario S runs with beyond the
# settings above, for the report.
daemon_settings() {
  local set
  set=$(echo $(scenario_env "$1") ${DAEMON_ENV:-})
  echo "${set:-defaults}"
}

RESULTS=$WORK/results
: >"$RESULTS"
status=0
for s in "$@"; do
  echo
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  start_daemon "$s"
  PERF_PID=""
  if [[ -n ${PERF_DIR:-} ]]; then
    # Optional: a CPU profile of the whole scenario with perf (linux-perf).
    mkdir -p "$PERF_DIR"
    perf record -q -g -F 499 -p "$DAEMON_PID" -o "$PERF_DIR/$s.perf.data" >/dev/null 2>&1 &
    PERF_PID=$!
  fi
  # shellcheck disable=SC2046
  if timeout 600 "$WORK/fanout-bench" -scenario "$s" -url "ws://127.0.0.1:$DAEMON_PORT/ws" \
    -redis "127.0.0.1:$REDIS_PORT" -pid "$DAEMON_PID" -sources "$SOURCES" -timeout "$TIMEOUT" \
    -note "daemon settings: $(daemon_settings "$s")" \
    $(scenario_args "$s") | tee -a "$RESULTS"; then :; else
    echo "bench.sh: scenario $s failed" >&2
    status=1
  fi
  if [[ -n $PERF_PID ]]; then kill -INT "$PERF_PID" 2>/dev/null; wait "$PERF_PID" 2>/dev/null || true; fi
  stop_daemon
done

echo
echo "== summary$([[ $QUICK == 1 ]] && echo ' (QUICK=1: scaled down ~10x)') =="
"$WORK/fanout-bench" -summary "$RESULTS"
exit $status
