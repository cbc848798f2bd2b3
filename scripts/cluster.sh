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
# SURGE_* variables of the caller (SURGE_WORKERS, SURGE_SHARDS, ...) reach the nodes.
# Installs Debian's nginx with apt-get when it is missing (as root, or with sudo -n).
# Reports: artifacts/loadtest/cluster-*.json; logs: artifacts/loadtest/cluster-*.log.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

say() { printf '==> %s\n' "$*"; }
die() { printf '==> error: %s\n' "$*" >&2; exit 2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }

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
  say "installing Debian nginx: apt-get install -y nginx"
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get install -y nginx; then
    say "refreshing the package lists: apt-get update"
    as_root apt-get update
    as_root apt-get install -y nginx
  fi
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  [ -x "$NGINX" ] || die "nginx did not install"
fi

for port in 18080 "${NODE_PORTS[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "127.0.0.1:$port is already in use; stop what listens there"
  fi
done

OUT="$ROOT/artifacts/loadtest"
PREFIX="$ROOT/.local/nginx"
mkdir -p "$OUT" "$PREFIX/logs" "$PREFIX/tmp"
DB="surge_cluster_$$"
NODE_PIDS=()
NGINX_PID=""
CHECK_STATUS=0

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local status=$?
  if [ -n "$NGINX_PID" ] && kill -0 "$NGINX_PID" 2>/dev/null; then
    say "stopping nginx (pid $NGINX_PID)"
    kill -QUIT "$NGINX_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$NGINX_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$NGINX_PID" 2>/dev/null || true
    wait "$NGINX_PID" 2>/dev/null || true
  fi
  local pid
  for pid in "${NODE_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${NODE_PIDS[@]}"; do
    for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      say "node pid $pid did not stop within 20 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  if [ "${#NODE_PIDS[@]}" -gt 0 ]; then
    say "nodes stopped; stock check with every lease given back: surge check"
    if ! DATABASE_URL="$SURGE_PG_URL/$DB" "$SURGE_BIN" check; then
      CHECK_STATUS=1
    fi
  fi
  say "dropping database $DB"
  psql "$SURGE_PG_URL/postgres" -qAtc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null || true
  if [ "$status" -eq 0 ] && [ "$CHECK_STATUS" -ne 0 ]; then
    status=1
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "database $DB"
psql "$SURGE_PG_URL/postgres" -qAtc "CREATE DATABASE $DB" >/dev/null
export DATABASE_URL="$SURGE_PG_URL/$DB"
say "seeding the demo store"
SURGE_LOG=warn "$SURGE_BIN" seed --demo >"$OUT/cluster-seed.log" 2>&1 \
  || { tail -n 20 "$OUT/cluster-seed.log" >&2; exit 1; }

SESSION_KEY=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
TOKEN=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
if [ "${#SESSION_KEY}" -ne 64 ] || [ "${#TOKEN}" -ne 32 ]; then
  die "could not make secrets"
fi
export SURGE_ADMIN_TOKEN="$TOKEN"

for i in 1 2 3; do
  port=${NODE_PORTS[$((i - 1))]}
  say "starting node-$i on 127.0.0.1:$port (log: artifacts/loadtest/cluster-node-$i.log)"
  SURGE_BIND="127.0.0.1:$port" SURGE_NODE_ID="node-$i" SURGE_SESSION_KEY="$SESSION_KEY" \
    SURGE_BUS_PREFIX="surge-cluster-$$" SURGE_DRAIN_DELAY_SECS=0 \
    SURGE_LOG="${SURGE_LOG:-warn}" REDIS_URL="$REDIS_URL" \
    "$SURGE_BIN" serve >"$OUT/cluster-node-$i.log" 2>&1 &
  NODE_PIDS+=($!)
done
for i in 1 2 3; do
  port=${NODE_PORTS[$((i - 1))]}
  "$LT" wait-ready --url "http://127.0.0.1:$port" --timeout 60s --pid "${NODE_PIDS[$((i - 1))]}" \
    || { tail -n 30 "$OUT/cluster-node-$i.log" >&2; exit 1; }
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
"$NGINX" -p "$PREFIX" -e "$PREFIX/logs/error.log" -c "$conf" &
NGINX_PID=$!
"$LT" wait-ready --url "http://$LISTEN" --timeout 30s --pid "$NGINX_PID" \
  || { tail -n 30 "$PREFIX/logs/error.log" >&2; exit 1; }
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
