#!/usr/bin/env bash
# One Surge node on a database of its own, for load tests.
#
#   loadtests/node.sh SURGE_BIN NAME -- COMMAND [ARGS...]
#
# creates the database surge_lt_<name>_<pid>, seeds the demo store into it
# (`SURGE_BIN seed --demo`), starts `SURGE_BIN serve` on a free port of 127.0.0.1 with a
# random admin token, waits for /readyz, runs COMMAND, then stops the node (SIGTERM,
# SIGKILL after 20 s) and drops the database, also when COMMAND fails or is interrupted.
# Exits with COMMAND's status.
#
# COMMAND sees SURGE_LT_URL, SURGE_LT_SERVER_PID, SURGE_ADMIN_TOKEN and DATABASE_URL,
# which surge-loadtest reads as --url, --server-pid, --admin-token and --database-url.
#
# Needs SURGE_PG_URL (the PostgreSQL server without a database, as in
# .local/services.env). The node runs with SURGE_LOG=warn unless SURGE_LOG is set, and
# without Redis (in-process bus) unless LT_KEEP_REDIS=1, and with rate limits off (its
# buyers all come from one IP) unless SURGE_RATE_LIMITS=on, and with no cap on sockets per IP
# unless SURGE_WS_MAX_PER_IP is set; other SURGE_* variables of the
# caller (SURGE_WORKERS, SURGE_SHARDS, ...) reach it unchanged. LT_DB_PARAMS is appended
# to the node's database URL (e.g. "?sslmode=disable" for clear text, where the default,
# sslmode=prefer, uses TLS if the server offers it). Its log goes to
# artifacts/loadtest/NAME-surge.log.
#
# Sourced instead of run, it defines lt_node_start SURGE_BIN NAME (the node and its
# database go away when the sourcing script exits) and lt_node_stop (stop the node now,
# keep the database), for scripts that run several commands against one node.

# shellcheck source=scripts/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/scripts/lib.sh"

LT_NODE_PID=""

lt_node_start() {
  local surge_bin=$1 name=$2
  local root port token log db
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  : "${SURGE_PG_URL:?SURGE_PG_URL is not set (source .local/services.env)}"
  [ -x "$surge_bin" ] || die "$surge_bin is not an executable (build it first)"
  mkdir -p "$root/artifacts/loadtest"
  log="$root/artifacts/loadtest/$name-surge.log"
  db="surge_lt_$(printf '%s' "$name" | tr -c 'a-zA-Z0-9\n' '_' | tr 'A-Z' 'a-z')_$$"
  make_db "$db"
  export DATABASE_URL="$SURGE_PG_URL/$db${LT_DB_PARAMS:-}"
  say "seeding the demo store: $surge_bin seed --demo"
  SURGE_LOG="${SURGE_LOG:-warn}" "$surge_bin" seed --demo >"$log" 2>&1 \
    || { tail -n 20 "$log" >&2; return 1; }
  port=$(free_port)
  token=$(random_hex 16)
  say "starting $surge_bin serve on 127.0.0.1:$port (log: ${log#"$root"/})"
  local -a keep_redis=(-u REDIS_URL)
  [ "${LT_KEEP_REDIS:-0}" != 1 ] || keep_redis=()
  start_bg "the node" "$log" env "${keep_redis[@]}" SURGE_BIND="127.0.0.1:$port" \
    SURGE_ADMIN_TOKEN="$token" SURGE_NODE_ID="lt-$name-$$" SURGE_DRAIN_DELAY_SECS=0 \
    SURGE_RATE_LIMITS="${SURGE_RATE_LIMITS:-off}" \
    SURGE_WS_MAX_PER_IP="${SURGE_WS_MAX_PER_IP:-1000000}" \
    SURGE_LOG="${SURGE_LOG:-warn}" "$surge_bin" serve
  LT_NODE_PID=$BG_PID
  wait_ready "http://127.0.0.1:$port" 60 "$LT_NODE_PID" "$log" || return 1
  say "node ready: http://127.0.0.1:$port (pid $LT_NODE_PID)"
  export SURGE_LT_URL="http://127.0.0.1:$port" SURGE_LT_SERVER_PID="$LT_NODE_PID" \
    SURGE_ADMIN_TOKEN="$token"
}

# Stops the node now (it gives its leases back); the database stays until exit.
lt_node_stop() {
  stop_pid "$LT_NODE_PID" "the node"
  LT_NODE_PID=""
}

# Run as a command (not sourced).
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  if [ $# -lt 4 ] || [ "$3" != "--" ]; then
    sed -n '2,19s/^# \{0,1\}//p' "$0" >&2
    exit 2
  fi
  surge_bin=$1 name=$2
  shift 3
  lt_node_start "$surge_bin" "$name"
  set +e
  "$@"
  status=$?
  set -e
  exit "$status"
fi
