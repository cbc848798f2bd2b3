#!/usr/bin/env bash
# Runs the real-browser tests (tests/browser/*.test.mjs) against a real surge server.
#
#   SURGE_BIN=target/debug/surge DATABASE_URL=postgres://postgres@127.0.0.1:5432/some_db \
#     tests/browser/run.sh
#
# SURGE_BIN is a built surge binary; DATABASE_URL a database this script may fill (the
# caller creates and drops it). The script installs playwright-core (npm) and Debian's
# chromium when they are missing, seeds the demo store, starts `surge serve` on a free
# port with a random admin token, waits for /readyz, runs the tests, stops the server and
# exits with the tests' status. Screenshots and the server log go to artifacts/browser/.
# The server serves the storefront from this checkout's static/ (SURGE_STATIC_DIR), so
# the tests exercise the working tree's JS even when the binary embeds an older copy.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

# --- what the tests need -------------------------------------------------------------

npm_deps playwright-core

if [ -x /usr/bin/chromium ]; then
  say "chromium is installed: /usr/bin/chromium"
else
  apt_install chromium
  [ -x /usr/bin/chromium ] || die "chromium did not install to /usr/bin/chromium"
fi

# --- the server ----------------------------------------------------------------------

[ -n "${SURGE_BIN:-}" ] || die "SURGE_BIN is not set: the path of a built surge binary (e.g. target/debug/surge)"
[ -x "$SURGE_BIN" ] || die "SURGE_BIN=$SURGE_BIN is not an executable file"
[ -n "${DATABASE_URL:-}" ] || die "DATABASE_URL is not set: a PostgreSQL database this script may use"
export DATABASE_URL

ARTIFACTS="$ROOT/artifacts/browser"
mkdir -p "$ARTIFACTS"
LOG="$ARTIFACTS/surge.log"

say "seeding the demo store: $SURGE_BIN seed --demo"
"$SURGE_BIN" seed --demo

PORT=$(free_port)
TOKEN=$(random_hex 16)
BASE="http://127.0.0.1:$PORT"

STATIC_DIR="${SURGE_STATIC_DIR:-$ROOT/static}"
say "starting the server on $BASE, storefront from $STATIC_DIR (log: ${LOG#"$ROOT"/})"
: >"$LOG"
start_bg "the server" "$LOG" env SURGE_BIND="127.0.0.1:$PORT" \
  SURGE_STATIC_DIR="$STATIC_DIR" SURGE_ADMIN_TOKEN="$TOKEN" \
  SURGE_NODE_ID="browser-test-$$" SURGE_DRAIN_DELAY_SECS=0 "$SURGE_BIN" serve
wait_ready "$BASE" 60 "$BG_PID" "$LOG" || die "the server did not get ready (log above)"
say "the server is ready"

# --- the tests -----------------------------------------------------------------------

tests=(tests/browser/*.test.mjs)
say "running node --test tests/browser/ (${#tests[@]} file(s))"
set +e
SURGE_BASE_URL="$BASE" SURGE_ADMIN_TOKEN="$TOKEN" node --test "${tests[@]}"
status=$?
set -e

if [ "$status" -eq 0 ]; then
  say "browser tests passed; screenshots in ${ARTIFACTS#"$ROOT"/}/"
else
  say "browser tests FAILED (exit $status); last server log lines:"
  tail -n 30 "$LOG" || true
fi
exit "$status"
