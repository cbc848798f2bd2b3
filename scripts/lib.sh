# Shared shell functions of Surge's scripts. Source it, do not run it:
#
#   source "$ROOT/scripts/lib.sh"
#
# It only defines functions and a few variables; nothing runs on sourcing. The pieces:
#
#   say MSG / die MSG        progress on stderr (stdout stays for values); die exits 2
#   have CMD, is_root        whether a command exists, whether we are root
#   can_root, as_root CMD    root, or passwordless sudo (never a password prompt)
#   apt_install PKG...       Debian packages; `apt-get update` runs once per script
#   with_timeout SECS CMD    CMD with a time limit when coreutils' timeout exists
#   retry_for SECS CMD       CMD every 0.25 s until it succeeds or SECS have passed
#   port_in_use PORT         something accepts connections on 127.0.0.1:PORT
#   free_port                a port of 127.0.0.1 that nothing listens on
#   http_status URL          the HTTP status of GET URL (plain http, no curl needed)
#   wait_ready URL SECS [PID [LOG]]   until URL/readyz answers 200
#   random_hex BYTES         BYTES random bytes as hex, for tokens and keys
#   at_exit CMD [ARGS...]    run at exit (success, failure, Ctrl-C or TERM), last first
#   start_bg NAME LOG CMD... CMD in the background, its pid in BG_PID, stopped at exit
#   stop_pid PID [NAME]      SIGTERM, up to STOP_GRACE seconds (20), then SIGKILL
#   make_db NAME / drop_db NAME   a database on $SURGE_PG_URL, dropped at exit
#
# Cleanups may set EXIT_STATUS (the script's status so far) to fail a run that would
# otherwise pass, e.g. when a check after stopping the servers finds a problem.

# shellcheck shell=bash

say() { printf '==> %s\n' "$*" >&2; }
die() {
  printf '==> error: %s\n' "$*" >&2
  exit 2
}

have() { command -v "$1" >/dev/null 2>&1; }
is_root() { [ "$(id -u)" -eq 0 ]; }
can_root() { is_root || { have sudo && sudo -n true 2>/dev/null; }; }

as_root() {
  if is_root; then
    "$@"
  else
    sudo -n "$@"
  fi
}

APT_UPDATED=0
# fd 9 is closed for apt-get: a package may start a daemon, and that daemon must not
# inherit a lock a caller holds there (scripts/services.sh does).
apt_install() {
  have apt-get || die "package(s) '$*' needed but apt-get is not available; install them with your system's package manager and re-run"
  can_root || die "package(s) '$*' needed but not installed, and this script is neither root nor has passwordless sudo; install them ('sudo apt-get install -y $*') and re-run"
  if [ "$APT_UPDATED" -eq 0 ]; then
    say "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 9>&-
    APT_UPDATED=1
  fi
  say "apt-get install -y $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 9>&-
}

with_timeout() {
  local secs=$1
  shift
  if have timeout; then timeout "$secs" "$@"; else "$@"; fi
}

retry_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.25
  done
}

port_in_use() {
  # shellcheck disable=SC2016  # expanded by the inner bash
  with_timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# Below the ephemeral range, so the kernel never hands the port to an outgoing socket
# between this check and the server's bind.
free_port() {
  local lo=32768 hi i port
  read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
  [ "$lo" -gt 12000 ] || lo=30000
  for ((i = 0; i < 200; i++)); do
    port=$((10000 + (RANDOM * 32768 + RANDOM) % (lo - 10000)))
    if ! port_in_use "$port"; then
      echo "$port"
      return 0
    fi
  done
  die "found no free port on 127.0.0.1"
}

http_status() {
  local rest=${1#http://} hostport path=/ host port
  hostport=${rest%%/*}
  [[ "$rest" != */* ]] || path=/${rest#*/}
  host=${hostport%:*}
  port=${hostport##*:}
  [ "$host" != "$hostport" ] || port=80
  # shellcheck disable=SC2016  # expanded by the inner bash
  with_timeout 5 bash -c '
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf "GET %s HTTP/1.0\r\nHost: %s:%s\r\nConnection: close\r\n\r\n" "$3" "$1" "$2" >&3
    IFS=" " read -r _ code _ <&3 || exit 1
    printf "%s" "$code"' _ "$host" "$port" "$path" 2>/dev/null
}

wait_ready() {
  local base=${1%/} secs=$2 pid=${3:-} log=${4:-} deadline
  deadline=$((SECONDS + secs))
  say "waiting for $base/readyz (up to $secs s)"
  until [ "$(http_status "$base/readyz" || true)" = 200 ]; do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      [ -z "$log" ] || tail -n 30 "$log" >&2 || true
      say "error: pid $pid exited before $base/readyz answered 200"
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      [ -z "$log" ] || tail -n 30 "$log" >&2 || true
      say "error: $base/readyz did not answer 200 within $secs s"
      return 1
    fi
    sleep 0.25
  done
}

random_hex() {
  local hex
  hex=$(od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n')
  [ "${#hex}" -eq $(($1 * 2)) ] || die "could not read $1 random bytes"
  printf '%s' "$hex"
}

EXIT_STATUS=0
LIB_CLEANUPS=()

at_exit() {
  local cmd
  printf -v cmd '%q ' "$@"
  LIB_CLEANUPS+=("$cmd")
  if [ "${#LIB_CLEANUPS[@]}" -eq 1 ]; then
    trap lib_run_cleanups EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
  fi
}

# shellcheck disable=SC2317  # called by the EXIT trap
lib_run_cleanups() {
  EXIT_STATUS=$?
  set +e
  trap - INT TERM
  local i
  for ((i = ${#LIB_CLEANUPS[@]} - 1; i >= 0; i--)); do
    eval "${LIB_CLEANUPS[i]}"
  done
  LIB_CLEANUPS=()
  exit "$EXIT_STATUS"
}

STOP_GRACE=${STOP_GRACE:-20}

stop_pid() {
  local pid=$1 name=${2:-pid $1} i
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_GRACE * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name did not stop within $STOP_GRACE s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}

BG_PID=""
start_bg() {
  local name=$1 log=$2
  shift 2
  "$@" >>"$log" 2>&1 &
  BG_PID=$!
  at_exit stop_pid "$BG_PID" "$name"
}

make_db() {
  : "${SURGE_PG_URL:?SURGE_PG_URL is not set (source .local/services.env)}"
  [[ "$1" =~ ^[a-z_][a-z0-9_]*$ ]] || die "'$1' is not a plain database name"
  at_exit drop_db "$1"
  say "database $1"
  psql "$SURGE_PG_URL/postgres" -qAtc "CREATE DATABASE $1" >/dev/null
}

drop_db() {
  say "dropping database $1"
  psql "$SURGE_PG_URL/postgres" -qAtc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null || true
}

# The project's npm dev dependencies (package.json, package-lock.json), installed with
# Node.js itself when missing: `npm ci` unless every package named is there already.
# Run from the repository root.
npm_deps() {
  if ! have node || ! have npm; then
    apt_install nodejs npm
  fi
  local pkg missing=0
  for pkg in "$@"; do
    [ -d "node_modules/$pkg" ] || missing=1
  done
  if [ "$missing" -eq 0 ]; then
    say "npm packages installed: $*"
    return 0
  fi
  say "installing the npm dev dependencies: npm ci"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund >&2
}
