#!/usr/bin/env bash
# The API contract, tested from outside: Schemathesis (pinned, from PyPI, in a venv
# under .local/) runs every check against a live `surge serve` on a database of its
# own, seeded with the demo store, with the admin token, so the admin routes are
# exercised too. Phases: the schema's examples, coverage (each constraint's edges, and
# the methods a path does not serve), fuzzing, and stateful runs along the document's
# links (cart PUT -> GET cart, checkout -> GET order, ...). The seed is fixed and the
# examples per operation bounded, so a run is reproducible and takes under two minutes
# here.
# Any failure fails the script; the node is stopped and its database dropped on every
# path (success, failure, Ctrl-C).
#
#   scripts/schemathesis.sh
#
# Standalone: provisions PostgreSQL + Redis with scripts/services.sh when SURGE_PG_URL
# is not set, and builds target/debug/surge (ST_SKIP_BUILD=1 uses what is built).
# ST_MAX_EXAMPLES and ST_SEED override the bounds; ST_SURGE_BIN runs another build of
# surge (a release one, say). Reports go to artifacts/schemathesis/: JUnit, and a HAR
# of every exchange, from which scripts/schemathesis-links.py proves that the stateful
# phase followed the links it is meant to exercise (checkout -> order), not only
# that nothing failed.
#
# Every check is on; scripts/schemathesis.toml adds 422 to the statuses a schema-valid
# request may get, and says why. The node runs with its rate limits off: Schemathesis sends
# hundreds of requests a second from one address, many of them without the session
# cookie (so each makes a session), and the limits would answer most of them with a
# (documented) 429 instead of exercising the route.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

ST_VERSION=4.32.5
# Hypothesis, which Schemathesis generates with, is pinned as well: a new release
# changes what a fixed seed generates.
HYPOTHESIS_VERSION=6.170.15
VENV="$ROOT/.local/schemathesis-$ST_VERSION-h$HYPOTHESIS_VERSION"
ST="$VENV/bin/schemathesis"
ST_MAX_EXAMPLES=${ST_MAX_EXAMPLES:-100}
ST_SEED=${ST_SEED:-20261201}
OUT="$ROOT/artifacts/schemathesis"

# The pinned Schemathesis, installed once.
ensure_schemathesis() {
  if [ -x "$ST" ] && "$ST" --version 2>/dev/null | grep -q "$ST_VERSION"; then
    return 0
  fi
  have python3 || apt_install python3
  python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
  say "installing schemathesis $ST_VERSION into ${VENV#"$ROOT"/}"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION" \
    "hypothesis==$HYPOTHESIS_VERSION"
  "$ST" --version | grep -q "$ST_VERSION" || die "schemathesis $ST_VERSION did not install"
}
ensure_schemathesis

if [ -z "${SURGE_PG_URL:-}" ]; then
  say "SURGE_PG_URL is not set: provisioning services (scripts/services.sh)"
  bash scripts/services.sh
  # shellcheck disable=SC1091
  source .local/services.env
fi
have psql || die "psql is needed to make the database (scripts/services.sh installs it)"

if [ "${ST_SKIP_BUILD:-0}" != 1 ]; then
  say "building surge (debug)"
  "${CARGO:-cargo}" build --locked -p surge --bin surge
fi
SURGE_BIN=${ST_SURGE_BIN:-$ROOT/target/debug/surge}
[ -x "$SURGE_BIN" ] || die "$SURGE_BIN is not an executable (build it first)"

mkdir -p "$OUT"
LOG="$OUT/surge.log"
: >"$LOG"
DB="surge_st_$$"
make_db "$DB"
export DATABASE_URL="$SURGE_PG_URL/$DB"
say "seeding the demo store"
SURGE_LOG=warn "$SURGE_BIN" seed --demo >>"$LOG" 2>&1 || { tail -n 20 "$LOG" >&2; exit 1; }

PORT=$(free_port)
TOKEN=$(random_hex 16)
BASE="http://127.0.0.1:$PORT"
say "starting surge serve on $BASE (log: ${LOG#"$ROOT"/})"
start_bg "the node" "$LOG" env -u REDIS_URL SURGE_BIND="127.0.0.1:$PORT" \
  SURGE_ADMIN_TOKEN="$TOKEN" SURGE_NODE_ID="st-$$" SURGE_DRAIN_DELAY_SECS=0 \
  SURGE_RATE_LIMITS=off SURGE_LOG="${SURGE_LOG:-warn}" "$SURGE_BIN" serve
wait_ready "$BASE" 60 "$BG_PID" "$LOG"

# One shopper's session for the whole run (scripts/schemathesis.toml gives it to the
# `session_cookie` scheme). Schemathesis drops the cookies an answer sets before its
# next request, so without it every request is a new, empty cart: a stateful walk from
# a cart line to checkout would only ever meet `409 cart_empty`. The session is made
# the way a browser makes one: by putting a line in the cart.
SKU=$(curl -fsS "$BASE/api/products?limit=1" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["variants"][0]["sku"])')
JAR=$(mktemp)
at_exit rm -f "$JAR"
curl -fsS -o /dev/null -c "$JAR" -X PUT -H 'Content-Type: application/json' \
  -d '{"quantity": 1}' "$BASE/api/cart/items/$SKU"
ST_SESSION=$(awk '$6 == "surge_session" { print $7 }' "$JAR")
[ -n "$ST_SESSION" ] || die "no session cookie from PUT /api/cart/items/$SKU"
export ST_SESSION

# One worker: with two, Schemathesis' threads race on Python 3.11 (CPython's AST
# constructor's recursion counter, a half-done import), and it reports runtime errors of
# its own ("AST constructor recursion depth mismatch") that say nothing of the API.
say "schemathesis $ST_VERSION: every check, seed $ST_SEED, up to $ST_MAX_EXAMPLES examples per operation"
status=0
"$ST" --config-file "$ROOT/scripts/schemathesis.toml" run "$BASE/openapi.json" \
  --checks all \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "$ST_MAX_EXAMPLES" \
  --seed "$ST_SEED" \
  --workers 1 \
  --request-timeout 30 \
  --header "Authorization: Bearer $TOKEN" \
  --warnings off \
  --no-color \
  --report junit,har --report-junit-path "$OUT/junit.xml" \
  --report-har-path "$OUT/exchanges.har" || status=$?

if [ "$status" -eq 0 ]; then
  "$VENV/bin/python" "$ROOT/scripts/schemathesis-links.py" "$OUT/exchanges.har" || status=$?
fi

# A failure the checks did not see (a panic, a failed background job) still shows in
# the log. actix-http logs a request it cannot parse (the coverage phase sends bytes no
# header may hold) at ERROR, after answering it 400; those lines are the client's, not
# the node's.
node_errors() {
  grep -E 'ERROR|panicked' "$LOG" | grep -v 'request parse error' || true
}
if [ -n "$(node_errors)" ]; then
  say "the node logged errors during the run:"
  node_errors | head -n 20 >&2
  status=1
fi
if [ "$status" -eq 0 ]; then
  say "schemathesis: no failures"
else
  say "schemathesis FAILED (status $status); report in ${OUT#"$ROOT"/}/"
fi
exit "$status"
