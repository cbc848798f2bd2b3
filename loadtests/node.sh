#!/usr/bin/env bash
# One Surge node on a database of its own, for load tests.
#
#   loadtests/node.sh SURGE_BIN LOADTEST_BIN NAME -- COMMAND [ARGS...]
#
# creates the database surge_lt_<name>_<pid>, seeds the demo store into it
# (`SURGE_BIN seed --demo`), starts `SURGE_BIN serve` on a free port of 127.0.0.1 with a
# random admin token, waits for /readyz, runs COMMAND, then stops the node (SIGTERM,
# SIGKILL after 15 s) and drops the database, also when COMMAND fails or is interrupted.
# Exits with COMMAND's status.
#
# COMMAND sees SURGE_LT_URL, SURGE_LT_SERVER_PID, SURGE_ADMIN_TOKEN and DATABASE_URL,
# which surge-loadtest reads as --url, --server-pid, --admin-token and --database-url.
#
# Needs SURGE_PG_URL (the PostgreSQL server without a database, as in
# .local/services.env). The node runs with SURGE_LOG=warn unless SURGE_LOG is set, and
# without Redis (in-process bus) unless LT_KEEP_REDIS=1; other SURGE_* variables of the
# caller (SURGE_WORKERS, SURGE_SHARDS, ...) reach it unchanged. Its log goes to
# artifacts/loadtest/NAME-surge.log.
#
# Sourced instead of run, it defines lt_node_start SURGE_BIN LOADTEST_BIN NAME,
# lt_node_kill (stop the node, keep the database) and lt_node_stop (stop, drop), for
# scripts that run several commands against one node.

lt_say() { printf '==> %s\n' "$*" >&2; }

LT_NODE_PID=""
LT_NODE_DB=""

lt_node_start() {
  local surge_bin=$1 lt_bin=$2 name=$3
  local root port token log
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  : "${SURGE_PG_URL:?SURGE_PG_URL is not set (source .local/services.env)}"
  [ -x "$surge_bin" ] || { lt_say "error: $surge_bin is not an executable (build it first)"; return 2; }
  [ -x "$lt_bin" ] || { lt_say "error: $lt_bin is not an executable (build it first)"; return 2; }
  mkdir -p "$root/artifacts/loadtest"
  log="$root/artifacts/loadtest/$name-surge.log"
  LT_NODE_DB="surge_lt_$(printf '%s' "$name" | tr -c 'a-zA-Z0-9\n' '_')_$$"
  lt_say "database $LT_NODE_DB"
  psql "$SURGE_PG_URL/postgres" -qAtc "CREATE DATABASE $LT_NODE_DB" >/dev/null
  export DATABASE_URL="$SURGE_PG_URL/$LT_NODE_DB"
  lt_say "seeding the demo store: $surge_bin seed --demo"
  SURGE_LOG="${SURGE_LOG:-warn}" "$surge_bin" seed --demo >"$log" 2>&1 \
    || { tail -n 20 "$log" >&2; return 1; }
  port=$("$lt_bin" free-port)
  token=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
  [ "${#token}" -eq 32 ] || { lt_say "error: could not make an admin token"; return 1; }
  lt_say "starting $surge_bin serve on 127.0.0.1:$port (log: ${log#"$root"/})"
  if [ "${LT_KEEP_REDIS:-0}" = 1 ]; then
    SURGE_BIND="127.0.0.1:$port" SURGE_ADMIN_TOKEN="$token" SURGE_NODE_ID="lt-$name-$$" \
      SURGE_DRAIN_DELAY_SECS=0 SURGE_LOG="${SURGE_LOG:-warn}" \
      "$surge_bin" serve >>"$log" 2>&1 &
  else
    env -u REDIS_URL SURGE_BIND="127.0.0.1:$port" SURGE_ADMIN_TOKEN="$token" \
      SURGE_NODE_ID="lt-$name-$$" SURGE_DRAIN_DELAY_SECS=0 SURGE_LOG="${SURGE_LOG:-warn}" \
      "$surge_bin" serve >>"$log" 2>&1 &
  fi
  LT_NODE_PID=$!
  if ! "$lt_bin" wait-ready --url "http://127.0.0.1:$port" --timeout 60s --pid "$LT_NODE_PID"; then
    tail -n 30 "$log" >&2 || true
    return 1
  fi
  lt_say "node ready: http://127.0.0.1:$port (pid $LT_NODE_PID)"
  export SURGE_LT_URL="http://127.0.0.1:$port" SURGE_LT_SERVER_PID="$LT_NODE_PID" \
    SURGE_ADMIN_TOKEN="$token"
}

# Stops the node (SIGTERM, then SIGKILL after 15 s); keeps the database.
lt_node_kill() {
  if [ -n "$LT_NODE_PID" ] && kill -0 "$LT_NODE_PID" 2>/dev/null; then
    lt_say "stopping the node (pid $LT_NODE_PID)"
    kill -TERM "$LT_NODE_PID" 2>/dev/null || true
    for _ in $(seq 150); do
      kill -0 "$LT_NODE_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$LT_NODE_PID" 2>/dev/null; then
      lt_say "the node did not stop within 15 s: SIGKILL"
      kill -KILL "$LT_NODE_PID" 2>/dev/null || true
    fi
    wait "$LT_NODE_PID" 2>/dev/null || true
  fi
  LT_NODE_PID=""
}

# Stops the node and drops its database.
lt_node_stop() {
  lt_node_kill
  if [ -n "$LT_NODE_DB" ]; then
    lt_say "dropping database $LT_NODE_DB"
    psql "$SURGE_PG_URL/postgres" -qAtc "DROP DATABASE IF EXISTS $LT_NODE_DB WITH (FORCE)" >/dev/null || true
  fi
  LT_NODE_DB=""
}

# Run as a command (not sourced).
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  if [ $# -lt 5 ] || [ "$4" != "--" ]; then
    sed -n '2,20s/^# \{0,1\}//p' "$0" >&2
    exit 2
  fi
  surge_bin=$1 lt_bin=$2 name=$3
  shift 4
  trap lt_node_stop EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  lt_node_start "$surge_bin" "$lt_bin" "$name"
  set +e
  "$@"
  status=$?
  set -e
  exit "$status"
fi
