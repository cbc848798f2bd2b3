#!/usr/bin/env bash
# `make bench-cluster`: three `surge serve` nodes on 127.0.0.1:18081-18083 sharing one
# PostgreSQL database (created here) and one Redis, one SURGE_SESSION_KEY, node ids
# node-1..3, behind a private nginx on 127.0.0.1:18080 (cookie-hash affinity, WebSocket
# upgrades). Runs the flash sale through nginx, then once more straight at the three
# nodes, then stops everything, checks the stock invariant once the nodes have given
# their leases back (`surge check`), and drops the database, also on failure or Ctrl-C.
#
#   scripts/cluster.sh
#
# Environment: CLUSTER_BUYERS (20000), CLUSTER_UNITS (1000), CLUSTER_CONCURRENCY (1000),
# CLUSTER_DEADLINE (120s), LT_SKIP_BUILD=1 (use the release binaries as built).
# SURGE_* variables of the caller (SURGE_WORKERS, SURGE_SHARDS, ...) reach the nodes;
# rate limits are off (every buyer comes from 127.0.0.1) unless SURGE_RATE_LIMITS=on, and
# sockets per IP are not capped unless SURGE_WS_MAX_PER_IP is set.
# Installs Debian's nginx with apt-get when it is missing (as root, or with sudo -n).
# Reports: artifacts/loadtest/cluster-*.json; logs: artifacts/loadtest/cluster-*.log.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

BUYERS=${CLUSTER_BUYERS:-20000}
UNITS=${CLUSTER_UNITS:-1000}
CONCURRENCY=${CLUSTER_CONCURRENCY:-1000}
DEADLINE=${CLUSTER_DEADLINE:-120s}
LISTEN=127.0.0.1:18080
NODE_PORTS=(18081 18082 18083)

if [ -z "${SURGE_PG_URL:-}" ] || [ -z "${REDIS_URL:-}" ]; then
  say "provisioning PostgreSQL and Redis (scripts/services.sh)"
  bash scripts/services.sh
  # shellcheck disable=SC1091
  source .local/services.env
fi

if [ "${LT_SKIP_BUILD:-0}" != 1 ]; then
  say "building surge and surge-loadtest (release)"
  "${CARGO:-cargo}" build --release --locked -p surge -p surge-loadtest
fi
SURGE_BIN="$ROOT/target/release/surge"
LT="$ROOT/target/release/surge-loadtest"
if [ ! -x "$SURGE_BIN" ] || [ ! -x "$LT" ]; then
  die "release binaries missing (cargo build --release -p surge -p surge-loadtest)"
fi

NGINX=$(command -v nginx || true)
[ -z "$NGINX" ] && [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx
if [ -z "$NGINX" ]; then
  apt_install nginx
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  [ -x "$NGINX" ] || die "nginx did not install"
fi

for port in 18080 "${NODE_PORTS[@]}"; do
  if port_in_use "$port"; then
    die "127.0.0.1:$port is already in use; stop what listens there"
  fi
done

OUT="$ROOT/artifacts/loadtest"
PREFIX="$ROOT/.local/nginx"
mkdir -p "$OUT" "$PREFIX/logs" "$PREFIX/tmp"
DB="surge_cluster_$$"

# Runs at exit once the nodes are stopped (cleanups run last registered first).
# shellcheck disable=SC2317  # called at exit
check_stock() {
  say "nodes stopped; stock check with every lease given back: surge check"
  DATABASE_URL="$SURGE_PG_URL/$DB" "$SURGE_BIN" check || EXIT_STATUS=1
}

make_db "$DB"
export DATABASE_URL="$SURGE_PG_URL/$DB"
say "seeding the demo store"
SURGE_LOG=warn "$SURGE_BIN" seed --demo >"$OUT/cluster-seed.log" 2>&1 \
  || { tail -n 20 "$OUT/cluster-seed.log" >&2; exit 1; }

SESSION_KEY=$(random_hex 32)
TOKEN=$(random_hex 16)
export SURGE_ADMIN_TOKEN="$TOKEN"

at_exit check_stock
NODE_PIDS=()
for i in 1 2 3; do
  port=${NODE_PORTS[$((i - 1))]}
  log="$OUT/cluster-node-$i.log"
  : >"$log"
  say "starting node-$i on 127.0.0.1:$port (log: ${log#"$ROOT"/})"
  start_bg "node-$i" "$log" env SURGE_BIND="127.0.0.1:$port" SURGE_NODE_ID="node-$i" \
    SURGE_SESSION_KEY="$SESSION_KEY" SURGE_BUS_PREFIX="surge-cluster-$$" \
    SURGE_DRAIN_DELAY_SECS=0 SURGE_LOG="${SURGE_LOG:-warn}" REDIS_URL="$REDIS_URL" \
    SURGE_RATE_LIMITS="${SURGE_RATE_LIMITS:-off}" \
    SURGE_WS_MAX_PER_IP="${SURGE_WS_MAX_PER_IP:-1000000}" \
    "$SURGE_BIN" serve
  NODE_PIDS+=("$BG_PID")
done
for i in 1 2 3; do
  wait_ready "http://127.0.0.1:${NODE_PORTS[$((i - 1))]}" 60 "${NODE_PIDS[$((i - 1))]}" \
    "$OUT/cluster-node-$i.log" || exit 1
done
say "three nodes ready"

upstreams=""
for port in "${NODE_PORTS[@]}"; do
  upstreams+="${upstreams:+\\n}        server 127.0.0.1:$port max_fails=0;"
done
conf="$PREFIX/nginx.conf"
awk -v prefix="$PREFIX" -v listen="$LISTEN" -v ups="$upstreams" '
  /^@UPSTREAMS@$/ { print ups; next }
  { gsub(/@PREFIX@/, prefix); gsub(/@LISTEN@/, listen); print }
' scripts/nginx.conf.tmpl >"$conf"
"$NGINX" -t -q -p "$PREFIX" -e "$PREFIX/logs/error.log" -c "$conf"
say "starting nginx on $LISTEN ($conf)"
start_bg nginx "$PREFIX/logs/stdout.log" "$NGINX" -p "$PREFIX" -e "$PREFIX/logs/error.log" -c "$conf"
wait_ready "http://$LISTEN" 30 "$BG_PID" "$PREFIX/logs/error.log" || exit 1
say "nginx ready"

status=0
say "flash sale through nginx: $BUYERS buyers, $UNITS units, concurrency $CONCURRENCY"
"$LT" flash-sale --url "http://$LISTEN" --buyers "$BUYERS" --units "$UNITS" \
  --concurrency "$CONCURRENCY" --duration "$DEADLINE" \
  --report "$OUT/cluster-flash-sale-nginx.json" || status=1
say "flash sale straight at the three nodes (sessions round-robin)"
"$LT" flash-sale --url "http://127.0.0.1:18081" --url "http://127.0.0.1:18082" \
  --url "http://127.0.0.1:18083" --buyers "$BUYERS" --units "$UNITS" \
  --concurrency "$CONCURRENCY" --duration "$DEADLINE" --ceiling-db-duration 0 \
  --report "$OUT/cluster-flash-sale-direct.json" || status=1
exit "$status"
