#!/usr/bin/env bash
# The real-browser tests, on a database of their own that is dropped afterwards.
# Expects SURGE_PG_URL (server URL without a database) and a built target/debug/surge.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
: "${SURGE_PG_URL:?SURGE_PG_URL is not set (source .local/services.env)}"
DB="surge_browser_$$"
echo "==> browser tests: database $DB"
psql "$SURGE_PG_URL/postgres" -qAtc "CREATE DATABASE $DB"
trap 'psql "$SURGE_PG_URL/postgres" -qAtc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true' EXIT
SURGE_BIN="${SURGE_BIN:-$ROOT/target/debug/surge}" DATABASE_URL="$SURGE_PG_URL/$DB" \
  bash tests/browser/run.sh
