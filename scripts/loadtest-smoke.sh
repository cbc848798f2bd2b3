#!/usr/bin/env bash
# CI smoke of the load-test instrument (surge-loadtest): every scenario for a few
# seconds at a small size against a debug `surge serve` on a database of its own,
# asserting correctness only, never speed: exact orders in the flash sales, a clean
# stock invariant, no 5xx, no transport errors, every WebSocket delivery made, and in
# the campaign no oversell, no undersell, no customer past the limit, no admission out
# of the queue's order.
#
#   scripts/loadtest-smoke.sh
#
# Standalone: provisions PostgreSQL + Redis with scripts/services.sh when SURGE_PG_URL
# is not set, and builds target/debug/surge and target/debug/surge-loadtest (set
# LT_SKIP_BUILD=1 to use what is built). Reports go to artifacts/loadtest/smoke/.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=loadtests/node.sh
source "$ROOT/loadtests/node.sh"

if [ -z "${SURGE_PG_URL:-}" ]; then
  say "SURGE_PG_URL is not set: provisioning services (scripts/services.sh)"
  bash scripts/services.sh
  # shellcheck disable=SC1091
  source .local/services.env
fi

if [ "${LT_SKIP_BUILD:-0}" != 1 ]; then
  say "building surge and surge-loadtest (debug)"
  "${CARGO:-cargo}" build --locked -p surge -p surge-loadtest
fi

SURGE_BIN="$ROOT/target/debug/surge"
LT="$ROOT/target/debug/surge-loadtest"
OUT="$ROOT/artifacts/loadtest/smoke"
mkdir -p "$OUT"
[ -x "$LT" ] || die "$LT is not an executable (build it first)"

export SURGE_LOG="${SURGE_LOG:-warn}"
lt_node_start "$SURGE_BIN" smoke
# lt_node_start exported SURGE_LT_URL.
# shellcheck disable=SC2153
PORT=${SURGE_LT_URL##*:}

failed=()
steps=0
step() {
  local name=$1
  shift
  steps=$((steps + 1))
  say "smoke: $name"
  if "$LT" "$@" --strict --report "$OUT/$name.json"; then
    say "smoke: $name passed"
  else
    say "smoke: $name FAILED"
    failed+=("$name")
  fi
}

step browse browse --duration 2s --concurrency 4
step cart cart --duration 2s --concurrency 4 --ceiling-db-duration 1s
step flash-sale flash-sale --buyers 300 --units 30 --concurrency 30 --duration 60s \
  --ceiling-db-duration 1s
# Two URLs of the same node: exercises "sold out on every node URL" and session moves.
step flash-sale-2urls flash-sale --url "http://127.0.0.1:$PORT" --url "http://localhost:$PORT" \
  --buyers 200 --units 25 --concurrency 20 --duration 60s --ceiling-db-duration 0
# A waiting room: every buyer joins before the start (planned for 30 joins/s, so a slow
# CI machine still joins everyone at least 2 s ahead), 30 sockets wait for their push,
# the rest poll; exact sale, limit by normalized email, fairness.
step campaign campaign --buyers 300 --units 30 --admit-per-second 300 --socket-sample 30 \
  --lead 2s --join-rate 30 --duration 30s --concurrency 30
step fanout fanout --subscribers 50 --changes 4 --duration 60s --source-ips 127.0.0.2,127.0.0.3
step mixed mixed --duration 2s --concurrency 4
step ceiling-http ceiling-http --duration 1s --concurrency 4
step ceiling-db ceiling-db --duration 1s --concurrency 2

# After a graceful stop the node has given its leases back: the whole store must add up.
lt_node_stop
steps=$((steps + 1))
say "smoke: surge check after shutdown"
if "$SURGE_BIN" check; then
  say "smoke: surge check passed"
else
  failed+=("surge check")
fi

if [ "${#failed[@]}" -eq 0 ]; then
  say "loadtest smoke: all scenarios passed (reports in ${OUT#"$ROOT"/}/)"
  echo "smoke: $steps passed, 0 failed"
else
  say "loadtest smoke FAILED: ${failed[*]}"
  echo "smoke: $((steps - ${#failed[@]})) passed, ${#failed[@]} failed"
  exit 1
fi
