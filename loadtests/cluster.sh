#!/usr/bin/env bash
# Three Surge nodes behind nginx on a database of their own, for load tests.
#
#   loadtests/cluster.sh SURGE_BIN NAME -- COMMAND [ARGS...]
#
# creates the database surge_lt_<name>_<pid>, seeds the demo store into it, starts three
# `SURGE_BIN serve` nodes on free ports of 127.0.0.1 (node ids <name>-1..3, one session
# key, one random admin token, Redis as the bus with a channel prefix of their own)
# behind a private nginx on another free port (scripts/nginx.conf.tmpl: cookie-hash
# affinity, WebSocket upgrades), waits for every /readyz, runs COMMAND, then stops
# nginx and the nodes, checks the stock invariant once the nodes have given their
# leases back (`surge check`, which fails the run if it finds a violation), and drops
# the database, also when COMMAND fails or is interrupted. Exits with COMMAND's status.
#
# COMMAND sees SURGE_LT_URL (nginx), SURGE_LT_NODE_URLS (the three nodes, comma
# separated), SURGE_ADMIN_TOKEN and DATABASE_URL, which surge-loadtest reads as --url,
# --admin-token and --database-url.
#
# Needs SURGE_PG_URL and REDIS_URL (as in .local/services.env) and nginx (installed
# from Debian's packages when missing, as root or with sudo -n). The nodes run with
# SURGE_LOG=warn unless set and rate limits off (every buyer comes from 127.0.0.1)
# unless SURGE_RATE_LIMITS=on, with no cap on sockets per IP unless SURGE_WS_MAX_PER_IP
# is set; other SURGE_* variables of the caller reach them. Logs
# go to artifacts/loadtest/NAME-node-N.log and .local/nginx-NAME-<pid>/logs/.

set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

if [ $# -lt 4 ] || [ "$3" != "--" ]; then
  sed -n '2,24s/^# \{0,1\}//p' "$0" >&2
  exit 2
fi
SURGE_BIN=$1 NAME=$2
shift 3
: "${SURGE_PG_URL:?SURGE_PG_URL is not set (source .local/services.env)}"
: "${REDIS_URL:?REDIS_URL is not set (source .local/services.env)}"
[ -x "$SURGE_BIN" ] || die "$SURGE_BIN is not an executable (build it first)"

NGINX=$(command -v nginx || true)
[ -z "$NGINX" ] && [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx
if [ -z "$NGINX" ]; then
  apt_install nginx
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  [ -x "$NGINX" ] || die "nginx did not install"
fi

SLUG=$(printf '%s' "$NAME" | tr -c 'a-zA-Z0-9\n' '_' | tr 'A-Z' 'a-z')
OUT="$ROOT/artifacts/loadtest"
PREFIX="$ROOT/.local/nginx-$SLUG-$$"
mkdir -p "$OUT" "$PREFIX/logs" "$PREFIX/tmp"
at_exit rm -rf "$PREFIX"
DB="surge_lt_${SLUG}_$$"

# Runs at exit once the nodes are stopped (cleanups run last registered first).
# shellcheck disable=SC2317  # called at exit
check_stock() {
  say "nodes stopped; stock check with every lease given back: surge check"
  DATABASE_URL="$SURGE_PG_URL/$DB" "$SURGE_BIN" check || EXIT_STATUS=1
}

make_db "$DB"
export DATABASE_URL="$SURGE_PG_URL/$DB"
say "seeding the demo store"
SURGE_LOG=warn "$SURGE_BIN" seed --demo >"$OUT/$NAME-seed.log" 2>&1 \
  || { tail -n 20 "$OUT/$NAME-seed.log" >&2; exit 1; }

SESSION_KEY=$(random_hex 32)
export SURGE_ADMIN_TOKEN
SURGE_ADMIN_TOKEN=$(random_hex 16)

at_exit check_stock
NODE_PIDS=() NODE_URLS=()
for i in 1 2 3; do
  port=$(free_port)
  log="$OUT/$NAME-node-$i.log"
  : >"$log"
  say "starting $NAME-$i on 127.0.0.1:$port (log: ${log#"$ROOT"/})"
  start_bg "$NAME-$i" "$log" env SURGE_BIND="127.0.0.1:$port" SURGE_NODE_ID="$NAME-$i" \
    SURGE_SESSION_KEY="$SESSION_KEY" SURGE_BUS_PREFIX="surge-lt-$SLUG-$$" \
    SURGE_DRAIN_DELAY_SECS=0 SURGE_LOG="${SURGE_LOG:-warn}" REDIS_URL="$REDIS_URL" \
    SURGE_RATE_LIMITS="${SURGE_RATE_LIMITS:-off}" \
    SURGE_WS_MAX_PER_IP="${SURGE_WS_MAX_PER_IP:-1000000}" \
    "$SURGE_BIN" serve
  NODE_PIDS+=("$BG_PID")
  NODE_URLS+=("http://127.0.0.1:$port")
  # Bind before picking the next port, so two nodes never draw the same one.
  wait_ready "http://127.0.0.1:$port" 60 "$BG_PID" "$log" || exit 1
done
say "three nodes ready: ${NODE_URLS[*]}"

LISTEN="127.0.0.1:$(free_port)"
upstreams=""
for url in "${NODE_URLS[@]}"; do
  upstreams+="${upstreams:+\\n}        server ${url#http://} max_fails=0;"
done
conf="$PREFIX/nginx.conf"
awk -v prefix="$PREFIX" -v listen="$LISTEN" -v ups="$upstreams" '
  /^@UPSTREAMS@$/ { print ups; next }
  { gsub(/@PREFIX@/, prefix); gsub(/@LISTEN@/, listen); print }
' "$ROOT/scripts/nginx.conf.tmpl" >"$conf"
"$NGINX" -t -q -p "$PREFIX" -e "$PREFIX/logs/error.log" -c "$conf"
say "starting nginx on $LISTEN"
start_bg nginx "$PREFIX/logs/stdout.log" "$NGINX" -p "$PREFIX" -e "$PREFIX/logs/error.log" -c "$conf"
wait_ready "http://$LISTEN" 30 "$BG_PID" "$PREFIX/logs/error.log" || exit 1
say "nginx ready: http://$LISTEN"

export SURGE_LT_URL="http://$LISTEN"
SURGE_LT_NODE_URLS=$(IFS=,; printf '%s' "${NODE_URLS[*]}")
export SURGE_LT_NODE_URLS
set +e
"$@"
status=$?
set -e
exit "$status"
