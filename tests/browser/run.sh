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

say() { printf '==> %s\n' "$*"; }
die() { printf '==> error: %s\n' "$*" >&2; exit 2; }
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

# --- what the tests need -------------------------------------------------------------

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  say "installing Node.js and npm: apt-get install -y nodejs npm"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update
  as_root apt-get install -y nodejs npm
fi

if [ -d node_modules/playwright-core ]; then
  say "playwright-core is installed"
else
  command -v npm >/dev/null 2>&1 || die "npm is missing (it comes with Node.js)"
  if [ -f package-lock.json ]; then
    say "installing playwright-core: npm ci"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
  else
    say "installing playwright-core: npm install"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund
  fi
fi

if [ -x /usr/bin/chromium ]; then
  say "chromium is installed: /usr/bin/chromium"
else
  say "installing Debian chromium: apt-get install -y chromium"
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get install -y chromium; then
    say "refreshing the package lists: apt-get update"
    as_root apt-get update
    as_root apt-get install -y chromium
  fi
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

PORT=$(node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });')
TOKEN=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
[ "${#TOKEN}" -eq 32 ] || die "could not make an admin token"
BASE="http://127.0.0.1:$PORT"

SERVER_PID=""
# shellcheck disable=SC2317  # called by the EXIT trap
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    say "stopping the server (pid $SERVER_PID)"
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      say "the server did not stop within 10 s: SIGKILL"
      kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

STATIC_DIR="${SURGE_STATIC_DIR:-$ROOT/static}"
say "starting the server on $BASE, storefront from $STATIC_DIR (log: ${LOG#"$ROOT"/})"
SURGE_BIND="127.0.0.1:$PORT" \
SURGE_STATIC_DIR="$STATIC_DIR" \
SURGE_ADMIN_TOKEN="$TOKEN" \
SURGE_NODE_ID="browser-test-$$" \
SURGE_DRAIN_DELAY_SECS=0 \
  "$SURGE_BIN" serve >"$LOG" 2>&1 &
SERVER_PID=$!

say "waiting for $BASE/readyz (up to 60 s)"
ready_probe='fetch(process.argv[1]).then((r) => process.exit(r.status === 200 ? 0 : 1), () => process.exit(1))'
deadline=$((SECONDS + 60))
until node -e "$ready_probe" "$BASE/readyz"; do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    tail -n 30 "$LOG" >&2 || true
    SERVER_PID=""
    die "the server exited before it was ready (log above)"
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    tail -n 30 "$LOG" >&2 || true
    die "the server was not ready within 60 s (log above)"
  fi
  sleep 0.25
done
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
