#!/usr/bin/env bash
# The real-browser tests, on a database of their own that is dropped afterwards.
# Expects SURGE_PG_URL (server URL without a database) and a built target/debug/surge.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
: "${SURGE_PG_URL:?SURGE_PG_URL is not set (source .local/services.env)}"
DB="surge_browser_$$"
make_db "$DB"
SURGE_BIN="${SURGE_BIN:-$ROOT/target/debug/surge}" DATABASE_URL="$SURGE_PG_URL/$DB" \
  bash tests/browser/run.sh
