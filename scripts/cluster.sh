#!/usr/bin/env bash
# `make bench-cluster`: three `surge serve` nodes sharing one PostgreSQL database and one
# Redis behind a private nginx (loadtests/cluster.sh: free ports of 127.0.0.1, one
# session key, cookie-hash affinity, WebSocket upgrades). Runs the flash sale through
# nginx, then once more straight at the three nodes; loadtests/cluster.sh then stops
# everything, checks the stock invariant once the nodes have given their leases back
# (`surge check`), and drops the database, also on failure or Ctrl-C.
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

if [ -z "${SURGE_PG_URL:-}" ] || [ -z "${REDIS_URL:-}" ]; then
  say "provisioning PostgreSQL and Redis (scripts/services.sh)"
  bash scripts/services.sh
  # shellcheck disable=SC1091
  source .local/services.env
fi

if [ "${LT_SKIP_BUILD:-0}" != 1 ] && [ "${1:-}" != "--sales" ]; then
  say "building surge and surge-loadtest (release)"
  "${CARGO:-cargo}" build --release --locked -p surge -p surge-loadtest
fi
SURGE_BIN="$ROOT/target/release/surge"
LT="$ROOT/target/release/surge-loadtest"
if [ ! -x "$SURGE_BIN" ] || [ ! -x "$LT" ]; then
  die "release binaries missing (cargo build --release -p surge -p surge-loadtest)"
fi

if [ "${1:-}" = "--sales" ]; then
  # Run by loadtests/cluster.sh, which gives the cluster's addresses.
  OUT="$ROOT/artifacts/loadtest"
  direct=()
  IFS=, read -r -a nodes <<<"$SURGE_LT_NODE_URLS"
  for url in "${nodes[@]}"; do direct+=(--url "$url"); done
  status=0
  say "flash sale through nginx: $BUYERS buyers, $UNITS units, concurrency $CONCURRENCY"
  "$LT" flash-sale --url "$SURGE_LT_URL" --buyers "$BUYERS" --units "$UNITS" \
    --concurrency "$CONCURRENCY" --duration "$DEADLINE" \
    --report "$OUT/cluster-flash-sale-nginx.json" || status=1
  say "flash sale straight at the three nodes (sessions round-robin)"
  "$LT" flash-sale "${direct[@]}" --buyers "$BUYERS" --units "$UNITS" \
    --concurrency "$CONCURRENCY" --duration "$DEADLINE" --ceiling-db-duration 0 \
    --report "$OUT/cluster-flash-sale-direct.json" || status=1
  exit "$status"
fi

exec bash "$ROOT/loadtests/cluster.sh" "$SURGE_BIN" cluster -- bash "$0" --sales
