#!/usr/bin/env bash
# bench.sh: run the fanout load-generator scenarios (cmd/fanout-bench)
# against a fresh daemon each, all on loopback.
#
#   ./bench.sh                 # every scenario: S1 S1-sse S1-max S2 S2-sse
#                              # S2-ack S2-script S2-history-off S3 S3-script
#                              # S3-history-off S4 S4-sse connect storm
#   ./bench.sh S2 S3           # a subset
#   QUICK=1 ./bench.sh         # everything scaled down ~10x (smoke run)
#   PERF_DIR=/tmp/p ./bench.sh S3   # also record the daemon with perf
#                                   # (linux-perf; perf report -i /tmp/p/S3.perf.data)
#   DAEMON_ENV='GOMAXPROCS=1' ./bench.sh S2   # extra environment for the daemon(s)
#
# Scenarios run only when named (not part of the default run):
#   ./bench.sh scale-pattern scale-user   # 3 instances on one Redis, one per
#       # SUBSCRIBE_MODE: users spread over them round-robin (all of a user's
#       # connections on one instance), SCALE_RATE events/s for SCALE_SECONDS;
#       # reports what each instance received from Redis, Redis egress/s,
#       # CPU per delivery over all instances, p50/p99, lost/duplicated.
#       # SCALE_INSTANCES (3), SCALE_USERS (3000), SCALE_RATE (1500),
#       # SCALE_SECONDS (20) override the load.
#   ./bench.sh S1-max ceiling   # the ceiling of one instance: idle
#       # connections per GiB (S1-max), then a sweep of publish rates
#       # (CEILING_RATES events/s to CEILING_USERS users x 2, CEILING_SECONDS
#       # each, a fresh daemon per step) that stops at the first step whose
#       # p99 exceeds CEILING_P99 (50ms), or that loses an event, or that the
#       # generator cannot publish at; at most 10 steps and CEILING_BUDGET
#       # seconds (180) in all. The summary names the ceiling.
#   ./bench.sh cluster-classic cluster-sharded   # 3 instances on a local
#       # Redis Cluster (3 masters + 3 replicas, started once for these),
#       # SUBSCRIBE_MODE=user in both: cluster-classic publishes with PUBLISH
#       # (every node forwards every event to every node over the cluster
#       # bus), cluster-sharded runs PUBSUB_SHARDED=true and publishes with
#       # SPUBLISH, so sharding is the only difference. The scale load
#       # (SCALE_USERS x 2 connections, 256 B) at each of CLUSTER_RATES
#       # events/s for CLUSTER_SECONDS, a fresh set of daemons per step; the
#       # first rate is SCALE_RATE (the scale-* load), the ramp stops at the
#       # first step over (as the ceiling: a loss, p99 over CEILING_P99, the
#       # generator short of the rate), after CLUSTER_BUDGET seconds per
#       # scenario or 6 steps. Reports per node: CPU per event, bytes to
#       # clients, to replicas and on the cluster bus (estimated from
#       # /proc/PID/io), cluster bus messages and forwarded publishes.
#
# It raises the soft open-files limit to the hard one, builds the daemon and
# the bench into a temporary directory, starts its own redis-server on a free
# loopback port (no persistence), and for each scenario starts the daemon on
# a free port with LOG_LEVEL=warn (info logs a line per connection),
# CONNECT_RATE_PER_IP=0 and MAX_CONNECTIONS_PER_USER=0 (one client address
# opens thousands of connections) and ADMIN_ADDR=off (the scale scenarios:
# several daemons, each with an admin listener on a free port), waits for
# /ready, runs fanout-bench with -pid set to the daemon(s), and stops them. Redis is
# emptied (FLUSHALL) before each scenario, so each one's history starts
# empty. Everything it started is stopped on exit. Reports (table +
# BENCH_JSON line) go to stdout; a summary table of all scenarios is printed
# at the end.
#
# History: the daemon runs with its defaults (HISTORY=on), except in
# S2-history-off and S3-history-off (HISTORY=off); S2, S3 and their -off
# twins use fanout.v1 clients, so the pairs differ only by the history.
# S2 and S3 publish with plain PUBLISH (the daemon records each event);
# S2-script and S3-script publish the same load with the publish script
# (EVALSHA, as fanout publish does: the event is appended and published in
# an envelope with its id), history on. Each run has all three, so their
# figures compare within one run (Redis CPU per event included).
# storm: 5 000 clients of 5 000 users resume at once, 50 events behind,
# while 200 other users get 500 events/s (cmd/fanout-bench/README.md).
#
# SSE: S1-sse, S2-sse and S4-sse run the loads of S1, S2 and S4 over
# Server-Sent Events streams (fanout-bench -transport sse: GET
# /events?username=uN on the daemon's port, the same -url) instead of
# WebSockets, each right after its WebSocket twin, with the same daemon
# settings. The daemon's SSE heartbeat is a fixed 15 s, so S1-sse settles
# 17 s (QUICK too) and RSS is read once every stream has had one (the
# report says how many had). S2-sse checks the ids of the "id:" lines
# (history on) as S2 checks fanout.v1's; an "event: resync" counts as a
# control (a failure). The storm has no SSE twin.
#
# S2-ack is S2 with read receipts flowing: each connection acknowledges
# the last event id it received, at most once a second (fanout-bench -ack,
# as fanout-client.js does), so the daemon writes every user's seen id
# once a second besides recording and delivering.
set -euo pipefail
cd "$(dirname "$0")"

ALL=(S1 S1-sse S1-max S2 S2-sse S2-ack S2-script S2-history-off S3 S3-script S3-history-off S4 S4-sse connect storm)
# Run only when named: several instances, the ceiling sweep, and the
# Redis Cluster ramps.
EXTRA=(scale-pattern scale-user ceiling cluster-classic cluster-sharded)
if (($# == 0)); then set -- "${ALL[@]}"; fi
for s in "$@"; do
  case " ${ALL[*]} ${EXTRA[*]} " in *" $s "*) ;; *) echo "bench.sh: unknown scenario $s (known: ${ALL[*]} ${EXTRA[*]})" >&2; exit 2 ;; esac
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
REDIS_PID=""
# The Redis Cluster of the cluster-* scenarios (started on first use):
# its nodes' PIDs and ports, and the seeds for the daemons and the bench.
CLUSTER_PIDS=() CLUSTER_PORTS=() CLUSTER_SEEDS=""
# The running daemons: PIDs, public ports and admin ports (admin "off" for
# the single-instance scenarios); DAEMON_PID and DAEMON_PORT are the first.
DAEMON_PIDS=() DAEMON_PORTS=() ADMIN_PORTS=()
DAEMON_PID="" DAEMON_PORT=""
cleanup() {
  local pid
  for pid in "${DAEMON_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${DAEMON_PIDS[@]}"; do wait_gone "$pid" 15; done
  [[ -n $REDIS_PID ]] && kill -TERM "$REDIS_PID" 2>/dev/null && wait_gone "$REDIS_PID" 5
  for pid in "${CLUSTER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${CLUSTER_PIDS[@]}"; do wait_gone "$pid" 5; done
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

# free_port [TAKEN...]: a loopback TCP port nobody listens on and not
# among TAKEN, below the ephemeral range so client sockets never take it.
free_port() {
  local p i
  for ((i = 0; i < 100; i++)); do
    p=$((20000 + RANDOM % 12000))
    case " $* " in *" $p "*) continue ;; esac
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

# cluster_port TAKEN...: a free loopback port P, not among TAKEN, whose
# cluster bus port P+10000 is free too and below the ephemeral range.
cluster_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 2700))
    case " $* " in *" $p "* | *" $((p + 10000)) "* | *" $((p - 10000)) "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && ! (exec 3<>"/dev/tcp/127.0.0.1/$((p + 10000))") 2>/dev/null; then
      echo "$p"; return
    fi
  done
  echo "bench.sh: no free port pair for a cluster node" >&2; exit 1
}

# start_cluster: a Redis Cluster of 3 masters and 3 replicas on loopback
# (no persistence, cluster-node-timeout 5000), once per bench.sh run;
# waits until every node says cluster_state:ok, knows 3 masters serving
# all slots and 3 replicas, and every replica's link to its master is up.
start_cluster() {
  [[ -n $CLUSTER_SEEDS ]] && return
  local i j port dir addrs=() ok
  for ((i = 0; i < 6; i++)); do
    port=$(cluster_port "$REDIS_PORT" "${CLUSTER_PORTS[@]}" "${DAEMON_PORTS[@]}")
    dir=$WORK/cluster-$port
    mkdir -p "$dir"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" --appendonly no \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
      --maxclients 10000 --daemonize no --logfile "$dir/redis.log" &
    CLUSTER_PIDS+=($!) CLUSTER_PORTS+=("$port") addrs+=("127.0.0.1:$port")
  done
  for port in "${CLUSTER_PORTS[@]}"; do
    for ((j = 0; j < 50; j++)); do
      redis-cli -p "$port" ping >/dev/null 2>&1 && continue 2
      sleep 0.1
    done
    echo "bench.sh: cluster node $port did not start" >&2; cat "$WORK/cluster-$port/redis.log" >&2; exit 1
  done
  if ! redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$WORK/cluster-create.log" 2>&1; then
    echo "bench.sh: redis-cli --cluster create failed" >&2; cat "$WORK/cluster-create.log" >&2; exit 1
  fi
  for ((j = 0; j < 300; j++)); do
    ok=1
    for port in "${CLUSTER_PORTS[@]}"; do
      redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || { ok=0; break; }
      # Three masters with slots (a line ends in a slot range) and three
      # replicas, as this node sees them.
      [[ $(redis-cli -p "$port" cluster nodes 2>/dev/null | grep -c '[ ,]master .*[0-9]$') == 3 &&
        $(redis-cli -p "$port" cluster nodes 2>/dev/null | grep -c '[ ,]slave ') == 3 ]] || { ok=0; break; }
      if redis-cli -p "$port" info replication | grep -q '^role:slave'; then
        redis-cli -p "$port" info replication | grep -q '^master_link_status:up' || { ok=0; break; }
      fi
    done
    ((ok)) && break
    sleep 0.1
  done
  if ((!ok)); then
    echo "bench.sh: the Redis Cluster did not converge in 30 s" >&2
    redis-cli -p "${CLUSTER_PORTS[0]}" cluster nodes >&2
    exit 1
  fi
  CLUSTER_SEEDS=$(join , "" "" "${addrs[@]}")
  echo "Redis Cluster: 3 masters + 3 replicas on ${CLUSTER_PORTS[*]} (bus ports +10000), ready after $((j / 10)).$((j % 10)) s"
}

# flush_cluster: empties every master (their replicas follow).
flush_cluster() {
  local port
  for port in "${CLUSTER_PORTS[@]}"; do
    if redis-cli -p "$port" info replication | grep -q '^role:master'; then
      redis-cli -p "$port" flushall >/dev/null
    fi
  done
}

# start_daemons S [N]: N fresh daemons (default 1) for scenario S, on one
# Redis. With N > 1 each has its own admin listener (ADMIN_ADDR) for the
# bench to read /admin/stats; a single daemon runs with ADMIN_ADDR=off.
start_daemons() {
  local n=${2:-1} i j port admin admin_addr
  DAEMON_PIDS=() DAEMON_PORTS=() ADMIN_PORTS=()
  for ((i = 0; i < n; i++)); do
    port=$(free_port "${DAEMON_PORTS[@]}" "${ADMIN_PORTS[@]}")
    admin=off admin_addr=off
    if ((n > 1)); then
      admin=$(free_port "$port" "${DAEMON_PORTS[@]}" "${ADMIN_PORTS[@]}")
      admin_addr=127.0.0.1:$admin
    fi
    # shellcheck disable=SC2046
    PORT=$port LISTEN_HOST=127.0.0.1 REDIS_HOST=127.0.0.1 REDIS_PORT=$REDIS_PORT \
      LOG_LEVEL=warn CONNECT_RATE_PER_IP=0 MAX_CONNECTIONS_PER_USER=0 ADMIN_ADDR=$admin_addr \
      env $(scenario_env "$1") ${DAEMON_ENV:-} $(scenario_mode "$1") "$WORK/fanout" >"$WORK/daemon-$i.log" 2>&1 &
    DAEMON_PIDS+=($!) DAEMON_PORTS+=("$port") ADMIN_PORTS+=("$admin")
  done
  DAEMON_PID=${DAEMON_PIDS[0]} DAEMON_PORT=${DAEMON_PORTS[0]}
  for ((i = 0; i < n; i++)); do
    for ((j = 0; j < 150; j++)); do
      curl -fs "http://127.0.0.1:${DAEMON_PORTS[i]}/ready" >/dev/null 2>&1 && continue 2
      kill -0 "${DAEMON_PIDS[i]}" 2>/dev/null || break
      sleep 0.1
    done
    echo "bench.sh: daemon $i not ready" >&2; tail -20 "$WORK/daemon-$i.log" >&2; exit 1
  done
}

stop_daemons() {
  local pid i log
  for pid in "${DAEMON_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${DAEMON_PIDS[@]}"; do
    wait_gone "$pid" 15
    wait "$pid" 2>/dev/null || true
  done
  # Warnings and errors other than the protected-mode notice.
  for ((i = 0; i < ${#DAEMON_PIDS[@]}; i++)); do
    log=$(grep -v 'PROTECTED MODE' "$WORK/daemon-$i.log" | tail -5 || true)
    if [[ -n $log ]]; then
      echo "  daemon $i log (warnings and errors, last 5 lines):"
      echo "$log" | sed 's/^/    /'
    fi
  done
  DAEMON_PIDS=() DAEMON_PORTS=() ADMIN_PORTS=() DAEMON_PID="" DAEMON_PORT=""
}

# join SEP PREFIX SUFFIX ITEMS...: the items, each as PREFIX item SUFFIX,
# separated by SEP.
join() {
  local sep=$1 pre=$2 suf=$3 out="" x
  shift 3
  for x in "$@"; do out+="${out:+$sep}$pre$x$suf"; done
  echo "$out"
}

# q FULL QUICK: FULL, or QUICK when QUICK=1.
q() { if [[ $QUICK == 1 ]]; then echo "$2"; else echo "$1"; fi; }

scenario_args() {
  case $1 in
    # The idle scenarios measure at steady state: pings every 2 s
    # (scenario_env) and a 5 s settle, so every connection has answered
    # at least two pings when RSS is read.
    S1) echo "-users $(q 9500 950) -conns-per-user 2 -settle 5s" ;;
    # The same over SSE: the daemon's heartbeat is every 15 s (fixed),
    # so a 17 s settle, QUICK too, for every stream to have had one.
    S1-sse) echo "-users $(q 9500 950) -conns-per-user 2 -settle 17s -transport sse" ;;
    S1-max) echo "-users $(q 19500 1950) -conns-per-user 1 -settle 5s" ;;
    S2 | S2-history-off) echo "-users $(q 2000 200) -conns-per-user 2 -events $(q 20000 2000) -rate $(q 2000 500) -payload 256 -settle 1s -subprotocol fanout.v1" ;;
    S2-script) echo "$(scenario_args S2) -script" ;;
    S2-ack) echo "$(scenario_args S2) -ack" ;;
    # S2's load over SSE: ids from the id: lines, no subprotocol.
    S2-sse) echo "-users $(q 2000 200) -conns-per-user 2 -events $(q 20000 2000) -rate $(q 2000 500) -payload 256 -settle 1s -transport sse" ;;
    S3 | S3-history-off) echo "-users $(q 2000 200) -conns-per-user 2 -events $(q 50000 5000) -rate 0 -inflight 1000 -payload 256 -settle 1s -subprotocol fanout.v1" ;;
    S3-script) echo "$(scenario_args S3) -script" ;;
    S4) echo "-users 1 -conns-per-user $(q 5000 500) -events $(q 500 50) -rate 0 -inflight 1000 -then-events $(q 300 30) -then-rate 10 -payload 256 -settle 1s" ;;
    S4-sse) echo "$(scenario_args S4) -transport sse" ;;
    connect) echo "-users $(q 19000 1900) -conns-per-user 1 -settle 1s -dial-concurrency 256" ;;
    # 5 000 resuming clients, one per user (each catch-up its own Redis
    # read); live users u0..u199, one connection each, 500 events/s.
    storm) echo "-storm-clients $(q 5000 500) -storm-missed 50 -users $(q 200 20) -conns-per-user 1 -rate $(q 500 100) -payload 256 -settle 1s -storm-baseline $(q 3s 1s) -storm-after 1s" ;;
    # SCALE_RATE events/s for SCALE_SECONDS, round-robin over the users,
    # each user's 2 connections on one instance (fanout-bench -url a,b,c).
    scale-pattern | scale-user) echo "-users $SCALE_USERS -conns-per-user 2 -events $((SCALE_RATE * SCALE_SECONDS)) -rate $SCALE_RATE -payload 256 -settle 2s -subprotocol fanout.v1" ;;
    # The scale load at a step's rate (run_cluster adds -rate, -events).
    cluster-classic) echo "-users $SCALE_USERS -conns-per-user 2 -payload 256 -settle 2s -subprotocol fanout.v1 -redis-cluster $CLUSTER_SEEDS" ;;
    cluster-sharded) echo "-users $SCALE_USERS -conns-per-user 2 -payload 256 -settle 2s -subprotocol fanout.v1 -redis-cluster $CLUSTER_SEEDS -spublish" ;;
  esac
}

# The load of the scale scenarios.
SCALE_INSTANCES=${SCALE_INSTANCES:-3}
SCALE_USERS=${SCALE_USERS:-$(q 3000 300)}
SCALE_RATE=${SCALE_RATE:-$(q 1500 300)}
SCALE_SECONDS=${SCALE_SECONDS:-$(q 20 5)}
# The ceiling sweep: publish rates (events/s) in increasing order, to
# CEILING_USERS users x 2 connections (2 deliveries per event).
CEILING_RATES=${CEILING_RATES:-$(q "2000 4000 6000 8000 12000 16000 24000 32000" "500 1000 2000 4000")}
CEILING_USERS=${CEILING_USERS:-$(q 2000 200)}
CEILING_SECONDS=${CEILING_SECONDS:-$(q 10 3)}
CEILING_P99=${CEILING_P99:-50ms}
CEILING_BUDGET=${CEILING_BUDGET:-$(q 180 60)}
CEILING_MAX_STEPS=10
# The cluster ramps: publish rates (events/s, the first one the scale
# load's), each for CLUSTER_SECONDS, at most CLUSTER_BUDGET seconds per
# scenario.
CLUSTER_RATES=${CLUSTER_RATES:-$(q "$SCALE_RATE 3000 6000 12000" "$SCALE_RATE 1000")}
CLUSTER_SECONDS=${CLUSTER_SECONDS:-$(q 20 5)}
CLUSTER_BUDGET=${CLUSTER_BUDGET:-$(q 240 60)}
CLUSTER_MAX_STEPS=6

# instances S: how many daemons scenario S runs.
instances() {
  case $1 in
    scale-pattern | scale-user | cluster-*) echo "$SCALE_INSTANCES" ;;
    *) echo 1 ;;
  esac
}

# scenario_env S: the daemon's extra settings for scenario S.
scenario_env() {
  case $1 in
    # S1-sse: no effect on SSE streams, but the same daemon as S1's.
    S1 | S1-sse | S1-max) echo "PING_INTERVAL=2s PONG_WAIT=6s" ;;
    S2-history-off | S3-history-off) echo "HISTORY=off" ;;
  esac
}

# scenario_mode S: SUBSCRIBE_MODE for the scale scenarios, applied after
# DAEMON_ENV so that the scenario's name holds.
scenario_mode() {
  case $1 in
    scale-pattern) echo "SUBSCRIBE_MODE=pattern" ;;
    scale-user) echo "SUBSCRIBE_MODE=user" ;;
    cluster-classic) echo "SUBSCRIBE_MODE=user PUBSUB_SHARDED=false REDIS_CLUSTER_ADDRS=$CLUSTER_SEEDS" ;;
    cluster-sharded) echo "SUBSCRIBE_MODE=user PUBSUB_SHARDED=true REDIS_CLUSTER_ADDRS=$CLUSTER_SEEDS" ;;
  esac
}

# daemon_settings S: what the daemon of scenario S runs with beyond the
# settings above, for the report.
daemon_settings() {
  local set
  set=$(echo $(scenario_env "${1%@*}") ${DAEMON_ENV:-} $(scenario_mode "${1%@*}"))
  echo "${set:-defaults}"
}

# run_bench S ARGS...: fanout-bench for scenario S against the running
# daemons, its report appended to RESULTS.
run_bench() {
  local s=$1 n=${#DAEMON_PIDS[@]} several=()
  shift
  if ((n > 1)); then
    several=(-admin "$(join , http://127.0.0.1: "" "${ADMIN_PORTS[@]}")")
    echo "$s: $n instances on ports ${DAEMON_PORTS[*]} (admin ${ADMIN_PORTS[*]}); user uN connects to instance N % $n"
  fi
  # --foreground: the bench stays in the foreground process group, so
  # Ctrl-C stops it (and then bench.sh) at once.
  timeout --foreground 600 "$WORK/fanout-bench" -scenario "$s" \
    -url "$(join , ws://127.0.0.1: /ws "${DAEMON_PORTS[@]}")" "${several[@]}" \
    -redis "127.0.0.1:$REDIS_PORT" -pid "$(join , "" "" "${DAEMON_PIDS[@]}")" -sources "$SOURCES" -timeout "$TIMEOUT" \
    -note "daemon settings: $(daemon_settings "$s")" "$@" | tee -a "$RESULTS"
}

# run_ceiling: the sweep of publish rates against one fresh daemon per
# step, until a step goes over (fanout-bench -ceiling says so), the rates
# run out, CEILING_MAX_STEPS steps or CEILING_BUDGET seconds.
run_ceiling() {
  local ceil=$WORK/ceiling rate step=0 t0=$SECONDS
  : >"$ceil"
  for rate in $CEILING_RATES; do
    if ((step >= CEILING_MAX_STEPS)); then echo "ceiling: stopped after $step steps"; break; fi
    # A step takes about CEILING_SECONDS plus connecting and draining.
    if ((SECONDS - t0 + CEILING_SECONDS + 15 > CEILING_BUDGET)); then
      echo "ceiling: stopped, CEILING_BUDGET (${CEILING_BUDGET}s) reached after $step steps"; break
    fi
    step=$((step + 1))
    echo
    redis-cli -p "$REDIS_PORT" flushall >/dev/null
    start_daemons ceiling
    # A step over the limit may lose events (slow clients are dropped):
    # that ends the sweep, it does not fail bench.sh.
    run_bench "ceiling@$rate" -users "$CEILING_USERS" -conns-per-user 2 -rate "$rate" \
      -events $((rate * CEILING_SECONDS)) -payload 256 -settle 1s -publishers 16 -subprotocol fanout.v1 |
      tee -a "$ceil" || true
    stop_daemons
    if ! "$WORK/fanout-bench" -ceiling "$ceil" -p99-limit "$CEILING_P99" >"$WORK/ceiling.out"; then
      echo "ceiling: step at $rate events/s went over, sweep stopped"
      break
    fi
  done
  echo
  cat "$WORK/ceiling.out" 2>/dev/null || true
}

# run_cluster S: the ramp of scenario S (cluster-classic or
# cluster-sharded) on the Redis Cluster: one step per rate of
# CLUSTER_RATES, named S@rate, each with a fresh set of daemons and an
# emptied cluster, until a step goes over (judged as the ceiling's), the
# rates run out, CLUSTER_MAX_STEPS steps or CLUSTER_BUDGET seconds. A
# fault in the first step (the scale load) fails bench.sh; a later step
# over the limit only ends the ramp.
run_cluster() {
  local s=$1 steps=$WORK/$1.steps rate step=0 t0=$SECONDS
  start_cluster
  : >"$steps"
  for rate in $CLUSTER_RATES; do
    if ((step >= CLUSTER_MAX_STEPS)); then echo "$s: stopped after $step steps"; break; fi
    if ((step > 0 && SECONDS - t0 + CLUSTER_SECONDS + 20 > CLUSTER_BUDGET)); then
      echo "$s: stopped, CLUSTER_BUDGET (${CLUSTER_BUDGET}s) reached after $step steps"; break
    fi
    step=$((step + 1))
    echo
    flush_cluster
    start_daemons "$s" "$(instances "$s")"
    # shellcheck disable=SC2046
    if run_bench "$s@$rate" $(scenario_args "$s") -rate "$rate" -events $((rate * CLUSTER_SECONDS)) -publishers 16 |
      tee -a "$steps"; then :; elif ((step == 1)); then
      echo "bench.sh: scenario $s failed at the scale load ($rate events/s)" >&2
      status=1
    fi
    stop_daemons
    if ! "$WORK/fanout-bench" -ceiling "$steps" -sweep "$s@" -p99-limit "$CEILING_P99" >"$WORK/$s.out"; then
      echo "$s: step at $rate events/s went over, ramp stopped"
      break
    fi
  done
  echo
  cat "$WORK/$s.out" 2>/dev/null || true
}

RESULTS=$WORK/results
: >"$RESULTS"
status=0
for s in "$@"; do
  echo
  if [[ $s == ceiling ]]; then
    run_ceiling
    continue
  fi
  if [[ $s == cluster-* ]]; then
    run_cluster "$s"
    continue
  fi
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  start_daemons "$s" "$(instances "$s")"
  PERF_PID=""
  if [[ -n ${PERF_DIR:-} ]]; then
    # Optional: a CPU profile of the whole scenario with perf (linux-perf),
    # of the first daemon.
    mkdir -p "$PERF_DIR"
    perf record -q -g -F 499 -p "$DAEMON_PID" -o "$PERF_DIR/$s.perf.data" >/dev/null 2>&1 &
    PERF_PID=$!
  fi
  # shellcheck disable=SC2046
  if run_bench "$s" $(scenario_args "$s"); then :; else
    echo "bench.sh: scenario $s failed" >&2
    status=1
  fi
  if [[ -n $PERF_PID ]]; then kill -INT "$PERF_PID" 2>/dev/null; wait "$PERF_PID" 2>/dev/null || true; fi
  stop_daemons
done

echo
echo "== summary$([[ $QUICK == 1 ]] && echo ' (QUICK=1: scaled down ~10x)') =="
"$WORK/fanout-bench" -summary "$RESULTS" -p99-limit "${CEILING_P99:-50ms}"
exit $status
