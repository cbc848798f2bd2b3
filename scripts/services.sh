#!/usr/bin/env bash
# Provision the PostgreSQL and Redis that Surge needs for local development/tests.
#
#   scripts/services.sh          make sure both services answer, create the `surge`
#                                database, write .local/services.env
#   scripts/services.sh stop     stop the *private* instances this script started
#                                (never touches system-wide services)
#
# Preference order:
#   PostgreSQL: 127.0.0.1:5432 as user postgres without password
#               -> private cluster in .local/pg (port 54329), created if needed
#                  (installs the `postgresql` package via apt-get when missing)
#   Redis:      127.0.0.1:6379 answering PING
#               -> private redis-server on port 56379 with state in .local/redis
#
# Environment (mainly for testing the fallback paths):
#   SURGE_PG_PORT_PROBE     port probed for an existing PostgreSQL (default 5432)
#   SURGE_REDIS_PORT_PROBE  port probed for an existing Redis      (default 6379)
#
# Afterwards: `source .local/services.env` (exports SURGE_PG_URL, DATABASE_URL, REDIS_URL).
# Idempotent: a second run only re-checks and leaves everything as it is.
set -Eeuo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
ROOT="$(cd -- "$SCRIPT_DIR/.." && pwd -P)"
LOCAL="$ROOT/.local"
ENV_FILE="$LOCAL/services.env"

HOST=127.0.0.1
PG_PROBE_PORT="${SURGE_PG_PORT_PROBE:-5432}"
REDIS_PROBE_PORT="${SURGE_REDIS_PORT_PROBE:-6379}"
PG_PRIVATE_PORT=54329
REDIS_PRIVATE_PORT=56379
PG_USER=postgres
DB_NAME=surge

REDIS_DIR="$LOCAL/redis"
REDIS_PIDFILE="$REDIS_DIR/redis.pid"
REDIS_LOGFILE="$REDIS_DIR/redis.log"

export PGCONNECT_TIMEOUT=5

# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"
trap 'printf "==> error: command failed (line %s): %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

path_hash() {
  if have sha256sum; then printf '%s' "$ROOT" | sha256sum | cut -c1-12
  else printf '%s' "$ROOT" | cksum | cut -d' ' -f1
  fi
}
TMP_PG_BASE="/tmp/surge-pg-$(id -u)-$(path_hash)"

# ---------------------------------------------------------------- probes ----
PSQL=""
find_psql() {
  if have psql; then PSQL="$(command -v psql)"; return 0; fi
  local bin
  bin="$(pg_bindir 2>/dev/null || true)"
  if [[ -n "$bin" && -x "$bin/psql" ]]; then PSQL="$bin/psql"; return 0; fi
  return 1
}

ensure_psql() {
  find_psql && return 0
  say "psql not found; installing postgresql-client"
  apt_install postgresql-client
  find_psql || die "psql still not found after installing postgresql-client"
}

psql_q() { # port db sql
  "$PSQL" -X -w -h "$HOST" -p "$1" -U "$PG_USER" -d "$2" -v ON_ERROR_STOP=1 -Atqc "$3"
}

pg_answers() { # port -> 0 if `select 1` works as postgres without a password
  [[ "$(psql_q "$1" postgres 'select 1' 2>/dev/null)" == 1 ]]
}

redis_ping() { # port
  local port=$1 reply=""
  if have redis-cli; then
    reply="$(with_timeout 5 redis-cli -h "$HOST" -p "$port" ping 2>/dev/null || true)"
  else
    # shellcheck disable=SC2016  # expanded by the inner bash
    reply="$(with_timeout 3 bash -c '
      exec 3<>"/dev/tcp/$1/$2" || exit 1
      printf "PING\r\n" >&3
      IFS= read -r -t 2 line <&3 || exit 1
      printf "%s" "$line"' _ "$HOST" "$port" 2>/dev/null | tr -d '\r' || true)"
    reply="${reply#+}"
  fi
  [[ "$reply" == PONG ]]
}

# ------------------------------------------------------ private PostgreSQL --
# Directory holding the newest PostgreSQL server binaries (initdb, pg_ctl, ...).
# With a version argument, prefer that major version (for an existing cluster).
pg_bindir() {
  local want=${1:-} d
  if [[ -n "$want" && -x "/usr/lib/postgresql/$want/bin/pg_ctl" ]]; then
    echo "/usr/lib/postgresql/$want/bin"; return 0
  fi
  d="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null \
        | sort -V | while read -r b; do [[ -x "$b/initdb" && -x "$b/pg_ctl" ]] && echo "$b"; done \
        | tail -n1 || true)"
  if [[ -n "$d" ]]; then echo "$d"; return 0; fi
  if have initdb && have pg_ctl; then dirname -- "$(command -v pg_ctl)"; return 0; fi
  return 1
}

# Existing private cluster base dir (contains data/PG_VERSION), if any.
existing_pg_base() {
  local b
  for b in "$LOCAL/pg" "$TMP_PG_BASE"; do
    if [[ -f "$b/data/PG_VERSION" ]]; then echo "$b"; return 0; fi
  done
  return 1
}

# Run a PostgreSQL server tool; as root it must run as the `postgres` user.
# fd 9 (our lock) is closed so a started server does not keep holding it.
pg_as_owner() {
  if is_root; then
    getent passwd postgres >/dev/null || die "running as root but there is no 'postgres' system user to run the private PostgreSQL as (install the 'postgresql' package)"
    if have runuser; then
      (cd / && runuser -u postgres -- "$@" 9>&-)
    else
      local cmd
      printf -v cmd '%q ' "$@"
      (cd / && su postgres -s /bin/sh -c "$cmd" 9>&-)
    fi
  else
    "$@" 9>&-
  fi
}

# Decide where a *new* private cluster goes (sets PG_BASE).
choose_new_pg_base() {
  PG_BASE="$LOCAL/pg"
  if is_root; then
    if [[ "$PG_BASE" == *"'"* ]] || ! pg_as_owner test -x "$LOCAL" 2>/dev/null; then
      say "NOTE: $LOCAL is not reachable by the 'postgres' user; keeping the private cluster in $TMP_PG_BASE instead (lost on reboot/tmp cleanup)"
      PG_BASE="$TMP_PG_BASE"
      if [[ -L "$PG_BASE" ]]; then die "$PG_BASE is a symlink; refusing to use it"; fi
      if [[ -e "$PG_BASE" ]]; then
        local owner
        owner="$(stat -c %U "$PG_BASE")"
        [[ "$owner" == postgres || "$owner" == root ]] || die "$PG_BASE exists and is owned by '$owner'; remove it and re-run"
      fi
    fi
  fi
}

pg_is_running() { # bindir base
  pg_as_owner "$1/pg_ctl" -D "$2/data" status >/dev/null 2>&1
}

pg_ready() { # port
  if have pg_isready; then
    pg_isready -q -h "$HOST" -p "$1" -U "$PG_USER"
  else
    [[ -n "$PSQL" ]] && pg_answers "$1"
  fi
}

start_private_pg() { # bindir base
  local bin=$1 base=$2 sock="$2/run" sockopt
  mkdir -p "$sock"
  is_root && chown postgres: "$sock"
  # Unix socket paths are limited to ~107 bytes; fall back to TCP only.
  if (( ${#sock} + 16 > 100 )); then
    say "NOTE: socket dir path too long for a Unix socket; private PostgreSQL listens on TCP only"
    sockopt="-k ''"
  else
    sockopt="-k '$sock'"
  fi
  say "starting private PostgreSQL ($base/data) on $HOST:$PG_PRIVATE_PORT"
  if ! pg_as_owner "$bin/pg_ctl" -D "$base/data" -l "$base/log" \
        -o "-p $PG_PRIVATE_PORT $sockopt -c listen_addresses=$HOST" -w -t 60 start >/dev/null; then
    tail -n 20 "$base/log" >&2 2>/dev/null || true
    die "private PostgreSQL failed to start (log: $base/log)"
  fi
}

init_locale() {
  if have locale && locale -a 2>/dev/null | grep -qiE '^c\.utf-?8$'; then echo C.UTF-8; else echo C; fi
}

setup_private_pg() {
  local base bin ver
  if base="$(existing_pg_base)"; then
    ver="$(cat "$base/data/PG_VERSION")"
    bin="$(pg_bindir "$ver")" || die "private cluster $base/data exists but no PostgreSQL server binaries were found (install 'postgresql')"
    if pg_is_running "$bin" "$base"; then
      say "private PostgreSQL ($base/data) is already running"
    else
      say "private PostgreSQL ($base/data) exists but is not running"
      start_private_pg "$bin" "$base"
    fi
  else
    if ! bin="$(pg_bindir)"; then
      say "PostgreSQL server binaries (initdb/pg_ctl) not found; installing postgresql"
      apt_install postgresql
      bin="$(pg_bindir)" || die "initdb/pg_ctl still not found under /usr/lib/postgresql/*/bin after installing postgresql"
    fi
    choose_new_pg_base
    base="$PG_BASE"
    say "creating private PostgreSQL cluster in $base/data (binaries: $bin)"
    mkdir -p "$base"
    if is_root; then chown postgres: "$base"; chmod 700 "$base"; fi
    if ! pg_as_owner "$bin/initdb" -D "$base/data" -U "$PG_USER" --auth=trust -E UTF8 \
          --locale="$(init_locale)" >"$base/initdb.log" 2>&1; then
      cat "$base/initdb.log" >&2 || true
      rm -rf "$base/data"
      die "initdb failed"
    fi
    start_private_pg "$bin" "$base"
  fi
  say "waiting for private PostgreSQL on $HOST:$PG_PRIVATE_PORT"
  retry_for 30 pg_ready "$PG_PRIVATE_PORT" || die "private PostgreSQL does not answer on $HOST:$PG_PRIVATE_PORT after 30 s (log: $base/log)"
}

# --------------------------------------------------------------- steps ------
PG_PORT=""
ensure_postgres() {
  say "checking for PostgreSQL on $HOST:$PG_PROBE_PORT (user $PG_USER, no password)"
  if ! find_psql; then
    if port_in_use "$PG_PROBE_PORT"; then
      say "something listens on $HOST:$PG_PROBE_PORT but psql is missing"
      ensure_psql
    fi
  fi
  if [[ -n "$PSQL" ]] && pg_answers "$PG_PROBE_PORT"; then
    say "using existing PostgreSQL on $HOST:$PG_PROBE_PORT"
    PG_PORT=$PG_PROBE_PORT
    return 0
  fi
  if port_in_use "$PG_PROBE_PORT"; then
    say "$HOST:$PG_PROBE_PORT is open but does not accept user $PG_USER without a password; using a private instance"
  else
    say "no PostgreSQL on $HOST:$PG_PROBE_PORT; using a private instance"
  fi
  setup_private_pg
  ensure_psql
  pg_answers "$PG_PRIVATE_PORT" || die "private PostgreSQL on $HOST:$PG_PRIVATE_PORT does not accept user $PG_USER"
  PG_PORT=$PG_PRIVATE_PORT
}

REDIS_PORT=""
ensure_redis() {
  say "checking for Redis on $HOST:$REDIS_PROBE_PORT"
  if redis_ping "$REDIS_PROBE_PORT"; then
    say "using existing Redis on $HOST:$REDIS_PROBE_PORT"
    REDIS_PORT=$REDIS_PROBE_PORT
    return 0
  fi
  say "no Redis on $HOST:$REDIS_PROBE_PORT; using a private instance on port $REDIS_PRIVATE_PORT"
  if redis_ping "$REDIS_PRIVATE_PORT"; then
    say "private Redis on $HOST:$REDIS_PRIVATE_PORT is already running"
    REDIS_PORT=$REDIS_PRIVATE_PORT
    return 0
  fi
  if ! have redis-server; then
    say "redis-server not found; installing redis-server"
    apt_install redis-server
    have redis-server || die "redis-server still not found after installing redis-server"
  fi
  mkdir -p "$REDIS_DIR"
  say "starting private Redis on $HOST:$REDIS_PRIVATE_PORT (state in $REDIS_DIR)"
  if ! redis-server --daemonize yes --bind "$HOST" --port "$REDIS_PRIVATE_PORT" \
        --save "" --appendonly no --dir "$REDIS_DIR" \
        --pidfile "$REDIS_PIDFILE" --logfile "$REDIS_LOGFILE" >&2 9>&-; then
    tail -n 20 "$REDIS_LOGFILE" >&2 2>/dev/null || true
    die "redis-server failed to start (log: $REDIS_LOGFILE)"
  fi
  say "waiting for private Redis on $HOST:$REDIS_PRIVATE_PORT"
  if retry_for 30 redis_ping "$REDIS_PRIVATE_PORT"; then
    REDIS_PORT=$REDIS_PRIVATE_PORT
    return 0
  fi
  tail -n 20 "$REDIS_LOGFILE" >&2 2>/dev/null || true
  die "private Redis does not answer PING on $HOST:$REDIS_PRIVATE_PORT after 30 s (log: $REDIS_LOGFILE)"
}

ensure_database() {
  if [[ "$(psql_q "$PG_PORT" postgres "select 1 from pg_database where datname='$DB_NAME'")" == 1 ]]; then
    say "database '$DB_NAME' already exists"
  else
    say "creating database '$DB_NAME' on $HOST:$PG_PORT"
    psql_q "$PG_PORT" postgres "CREATE DATABASE \"$DB_NAME\"" >/dev/null
  fi
}

write_env() {
  local content tmp
  content="$(cat <<EOF
# Generated by scripts/services.sh -- source it: . .local/services.env
export SURGE_PG_URL=postgres://$PG_USER@$HOST:$PG_PORT
export DATABASE_URL=postgres://$PG_USER@$HOST:$PG_PORT/$DB_NAME
export REDIS_URL=redis://$HOST:$REDIS_PORT
EOF
)"
  if [[ -f "$ENV_FILE" && "$(cat "$ENV_FILE")" == "$content" ]]; then
    say "$ENV_FILE is up to date"
  else
    tmp="$(mktemp "$LOCAL/.services.env.XXXXXX")"
    printf '%s\n' "$content" >"$tmp"
    chmod 644 "$tmp"
    mv -f "$tmp" "$ENV_FILE"
    say "wrote $ENV_FILE"
  fi
  sed -n 's/^export /    /p' "$ENV_FILE" >&2
}

lock() {
  mkdir -p "$LOCAL"
  if have flock; then
    exec 9>"$LOCAL/.services.lock"
    flock -w 120 9 || die "another scripts/services.sh is still running (lock $LOCAL/.services.lock)"
  fi
}

cmd_start() {
  lock
  ensure_postgres
  ensure_redis
  ensure_database
  write_env
  say "done; run: source .local/services.env"
}

cmd_stop() {
  local stopped=0 base bin pid
  if base="$(existing_pg_base)"; then
    bin="$(pg_bindir "$(cat "$base/data/PG_VERSION")")" || die "cannot find pg_ctl to stop $base/data"
    if pg_is_running "$bin" "$base"; then
      say "stopping private PostgreSQL ($base/data)"
      pg_as_owner "$bin/pg_ctl" -D "$base/data" -m fast -w stop >/dev/null
      stopped=1
    else
      say "private PostgreSQL ($base/data) is not running"
    fi
  fi
  if [[ -f "$REDIS_PIDFILE" ]]; then
    pid="$(cat "$REDIS_PIDFILE" 2>/dev/null || true)"
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
        && grep -q redis-server "/proc/$pid/cmdline" 2>/dev/null; then
      STOP_GRACE=10 stop_pid "$pid" "private Redis on $HOST:$REDIS_PRIVATE_PORT"
      stopped=1
    else
      say "private Redis is not running (stale pidfile removed)"
      rm -f "$REDIS_PIDFILE"
    fi
  fi
  [[ $stopped -eq 1 ]] || say "no private instances were running; system services are never touched"
  if [[ -f "$ENV_FILE" ]] && grep -qE ":($PG_PRIVATE_PORT|$REDIS_PRIVATE_PORT)(/|$)" "$ENV_FILE"; then
    rm -f "$ENV_FILE"
    say "removed $ENV_FILE (it pointed at the stopped private instances)"
  fi
}

case "${1:-start}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  -h|--help|help) sed -n '2,20s/^# \{0,1\}//p' "$0" ;;
  *) die "usage: $0 [start|stop]" ;;
esac
