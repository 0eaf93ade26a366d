#!/usr/bin/env bash
# A local scale-out rig: Redis, three relay replicas sharing it, and haproxy in front of them,
# all on 127.0.0.1. Ctrl-C stops everything and removes the temporary folder. When a replica
# exits (stop one to watch it drain, or kill it), the rig keeps running on the others;
# `kill -HUP <the rig's pid>` starts the stopped replicas again.
#
#   deploy/local/run-rig.sh
#
#   redis-server   127.0.0.1:16379               (no persistence, in a temporary folder)
#   relay r1-r3    127.0.0.1:18081-18083         internal ports 18091-18093
#   haproxy        127.0.0.1:18080               round-robin, health checks on /readyz
#
# Needs redis-server and haproxy (scripts/install-system-deps.sh installs them) and the relay
# (`make setup`; the virtualenv's `relay` is used when there is one, else `relay` on PATH, or
# set RELAY=/path/to/relay). Optional settings:
#   RIG_MQTT_URL   the MQTT broker for tunnel notifies (default: none; each replica running
#                  its own mosquitto on port 1883 would collide)
#   RIG_TOKEN      the API token of project "default" (default: a random one)
#   RIG_DRAIN_SECONDS  RELAY_DRAIN_SECONDS of the replicas (default 2, for quick stops)
#   RIG_KEEP=1     keep the temporary folder (logs) after stopping
#   RIG_RESTART=N  start a replica that exited again after N seconds (default: only on
#                  `kill -HUP`, so that a stopped replica stays down until asked)
#   RIG_BASE_PORT  move the rig's ports: haproxy on BASE, replicas BASE+1..3, their internal
#                  ports BASE+11..13, haproxy stats BASE+9 (default 18080, as haproxy.cfg has)
#   RIG_REDIS_PORT Redis's port (default 16379)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
REDIS_PORT=16379
LB_PORT=18080
STATS_PORT=18089
PORTS=(18081 18082 18083)
INTERNAL_PORTS=(18091 18092 18093)
SHIPPED_PORTS=("$LB_PORT" "$STATS_PORT" "${PORTS[@]}" "${INTERNAL_PORTS[@]}")   # as haproxy.cfg has them
REDIS_PORT="${RIG_REDIS_PORT:-$REDIS_PORT}"
numeric() { [[ "$2" =~ ^[0-9]+$ ]] || { echo "run-rig: $1 must be a number, not '$2'" >&2; exit 2; }; }
[ -z "${RIG_RESTART:-}" ] || numeric RIG_RESTART "$RIG_RESTART"
numeric RIG_REDIS_PORT "$REDIS_PORT"
if [ -n "${RIG_BASE_PORT:-}" ]; then
  numeric RIG_BASE_PORT "$RIG_BASE_PORT"
  (( RIG_BASE_PORT >= 1024 && RIG_BASE_PORT + 13 <= 65535 )) || { echo "run-rig: RIG_BASE_PORT must be 1024-65522" >&2; exit 2; }
  base="$RIG_BASE_PORT"
  LB_PORT=$base STATS_PORT=$((base + 9))
  PORTS=($((base + 1)) $((base + 2)) $((base + 3)))
  INTERNAL_PORTS=($((base + 11)) $((base + 12)) $((base + 13)))
fi
PUBLIC_URL="http://127.0.0.1:$LB_PORT"
RESTART_AFTER="${RIG_RESTART:-}"

die() { echo "run-rig: $*" >&2; exit 1; }

# --- what it needs ---------------------------------------------------------------------------
RELAY="${RELAY:-}"
if [ -z "$RELAY" ]; then
  if [ -x "$ROOT/.venv/bin/relay" ]; then RELAY="$ROOT/.venv/bin/relay"; else RELAY="$(command -v relay || true)"; fi
fi
if [ -z "$RELAY" ] || [ ! -x "$RELAY" ]; then
  die "the relay is not installed: run 'make setup' (or set RELAY=/path/to/relay)"
fi
REDIS_SERVER="$(command -v redis-server || true)"
HAPROXY="$(command -v haproxy || { [ -x /usr/sbin/haproxy ] && echo /usr/sbin/haproxy; } || true)"
[ -n "$REDIS_SERVER" ] || die "redis-server is missing: run scripts/install-system-deps.sh"
[ -n "$HAPROXY" ] || die "haproxy is missing: run scripts/install-system-deps.sh"

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$REDIS_PORT" "$LB_PORT" "${PORTS[@]}" "${INTERNAL_PORTS[@]}" "$STATS_PORT"; do
  if port_in_use "$port"; then die "port $port on 127.0.0.1 is already in use (another rig running?)"; fi
done

# Waits until something listens on a port, or the process behind it has died.
wait_port() {  # port pid name
  local i
  for i in $(seq 1 150); do
    port_in_use "$1" && return 0
    kill -0 "$2" 2>/dev/null || die "$3 exited at start; see $WORK/$3.log"
    sleep 0.2
  done
  die "$3 did not listen on port $1 within 30 s; see $WORK/$3.log"
}

# --- start ------------------------------------------------------------------------------------
WORK="$(mktemp -d -t relay-rig.XXXXXX)"
PIDS=()

# shellcheck disable=SC2317  # called through the EXIT trap
stop_all() {
  trap - INT TERM EXIT
  echo
  echo "stopping..."
  local i pid
  # haproxy first (no new connections), then the relays (they drain), Redis last.
  for (( i=${#PIDS[@]}-1; i>=0; i-- )); do
    pid="${PIDS[$i]}"
    [ -n "$pid" ] || continue   # a replica that is down
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "${RIG_KEEP:-}" = 1 ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

TOKEN="${RIG_TOKEN:-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')}"
umask 077
printf '# the rig'"'"'s API token: PROJECT:NAME:TOKEN\ndefault:rig:%s\n' "$TOKEN" > "$WORK/api-tokens.txt"
# The secret the replicas authenticate their bridges with (never stored in Redis).
od -An -N48 -tx1 /dev/urandom | tr -d ' \n' > "$WORK/bridge-secret"

# Each process runs in its own session (setsid), so that Ctrl-C reaches only this script, which
# then stops them in order: haproxy, the relays (they drain), Redis.
setsid "$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$WORK" --save "" --appendonly no \
  > "$WORK/redis.log" 2>&1 &
PIDS+=($!)
wait_port "$REDIS_PORT" "$!" redis

# Starts replica i (0-2) in the background; its pid goes to PIDS[i + 1].
start_replica() {
  local i=$1 name="r$(($1 + 1))"
  (
    cd "$WORK"
    export RELAY_HOST=127.0.0.1
    export RELAY_PORT="${PORTS[$i]}"
    export RELAY_PUBLIC_URL="$PUBLIC_URL"
    export RELAY_STORE_URL="redis://127.0.0.1:$REDIS_PORT/0"
    export RELAY_REPLICA_ID="$name"
    export RELAY_INTERNAL_HOST=127.0.0.1
    export RELAY_INTERNAL_PORT="${INTERNAL_PORTS[$i]}"
    export RELAY_INTERNAL_ADDRESS="127.0.0.1:${INTERNAL_PORTS[$i]}"
    export RELAY_DRAIN_SECONDS="${RIG_DRAIN_SECONDS:-2}"
    export RELAY_API_TOKENS_FILE="$WORK/api-tokens.txt"
    export RELAY_BRIDGE_SECRET_FILE="$WORK/bridge-secret"
    export RELAY_MQTT_URL="${RIG_MQTT_URL:-none}"
    export RELAY_DB="$WORK/$name.db"   # unused with RELAY_STORE_URL
    exec setsid "$RELAY" serve
  ) >> "$WORK/$name.log" 2>&1 &
  PIDS[i + 1]=$!
}

for i in 0 1 2; do start_replica "$i"; done
for i in 0 1 2; do
  wait_port "${INTERNAL_PORTS[$i]}" "${PIDS[$((i + 1))]}" "r$((i + 1))"
  wait_port "${PORTS[$i]}" "${PIDS[$((i + 1))]}" "r$((i + 1))"
done

# The shipped haproxy.cfg, with the ports moved when RIG_BASE_PORT asks for it.
HAPROXY_CFG="$HERE/haproxy.cfg"
if [ -n "${RIG_BASE_PORT:-}" ]; then
  HAPROXY_CFG="$WORK/haproxy.cfg"
  moved=("$LB_PORT" "$STATS_PORT" "${PORTS[@]}" "${INTERNAL_PORTS[@]}")
  # two passes through placeholders, so that a moved port is never taken for a shipped one
  script=""
  for k in "${!SHIPPED_PORTS[@]}"; do script+="s/\\b${SHIPPED_PORTS[$k]}\\b/@port$k@/g;"; done
  for k in "${!SHIPPED_PORTS[@]}"; do script+="s/@port$k@/${moved[$k]}/g;"; done
  sed "$script" "$HERE/haproxy.cfg" > "$HAPROXY_CFG"
fi
setsid "$HAPROXY" -f "$HAPROXY_CFG" -db > "$WORK/haproxy.log" 2>&1 &
PIDS+=($!)
wait_port "$LB_PORT" "$!" haproxy

cat <<USAGE
The rig is up (Ctrl-C stops it):
  load balancer   $PUBLIC_URL                (haproxy stats: http://127.0.0.1:$STATS_PORT/)
  replicas        r1 127.0.0.1:${PORTS[0]}  r2 127.0.0.1:${PORTS[1]}  r3 127.0.0.1:${PORTS[2]}
  health/metrics  http://127.0.0.1:${INTERNAL_PORTS[0]}/readyz  .../metrics  (${INTERNAL_PORTS[1]}, ${INTERNAL_PORTS[2]} for r2, r3)
  redis           redis://127.0.0.1:$REDIS_PORT/0
  logs            $WORK/{redis,r1,r2,r3,haproxy}.log

Create a tunnel through the load balancer:
  TOKEN=$TOKEN
  curl -s -H "X-Auth-Token: \$TOKEN" -H 'Content-Type: application/json' \\
       -d '{"device_id": "my-device"}' $PUBLIC_URL/v5/iot/default/tunnels
Then connect the source (tunnel_uri, header tunnel_access_token) and the device
(device-connect, the device token) through $PUBLIC_URL: successive connections go to
different replicas, which bridge the tunnel. Stop a replica (kill -TERM <pid>) to see it
drain: the rig keeps running on the others, and haproxy sends new connections to them.
kill -HUP $$ starts the stopped replicas again${RESTART_AFTER:+ (RIG_RESTART: after ${RESTART_AFTER} s by itself)}.
  pids: redis ${PIDS[0]}, r1 ${PIDS[1]}, r2 ${PIDS[2]}, r3 ${PIDS[3]}, haproxy ${PIDS[4]}, the rig $$
USAGE

# Watch the processes until Ctrl-C. A replica that exits is reported, and started again on
# `kill -HUP` (or after RIG_RESTART seconds); Redis or haproxy exiting stops the rig.
RESTART_NOW=0
trap 'RESTART_NOW=1' HUP
DOWN_SINCE=(0 0 0)
while true; do
  for k in 0 4; do
    if ! kill -0 "${PIDS[$k]}" 2>/dev/null; then
      status=0; wait "${PIDS[$k]}" 2>/dev/null || status=$?
      name=$([ "$k" = 0 ] && echo redis || echo haproxy)
      echo "run-rig: $name exited (status $status): the rig cannot go on; see $WORK/$name.log" >&2
      PIDS[k]=""
      RIG_KEEP=1
      exit 1
    fi
  done
  for i in 0 1 2; do
    pid="${PIDS[$((i + 1))]}" name="r$((i + 1))"
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      status=0; wait "$pid" 2>/dev/null || status=$?
      echo "run-rig: $name exited (status $status); the rig goes on with the others (kill -HUP $$ starts it again; log: $WORK/$name.log)" >&2
      PIDS[i + 1]=""
      DOWN_SINCE[i]=$SECONDS
    fi
    if [ -z "${PIDS[$((i + 1))]}" ]; then
      if [ "$RESTART_NOW" = 1 ] || { [ -n "$RESTART_AFTER" ] && (( SECONDS - DOWN_SINCE[i] >= RESTART_AFTER )); }; then
        start_replica "$i"
        echo "run-rig: $name started again (pid ${PIDS[$((i + 1))]})" >&2
      fi
    fi
  done
  RESTART_NOW=0
  sleep 0.5 &
  wait $! || true   # returns at once on a signal (Ctrl-C, HUP)
done
