#!/usr/bin/env bash
# Reads against the bare handler: Surge's product JSON, its list of 24 and a storefront
# page revalidated with If-None-Match (304), each beside a bare actix-web server with 2
# workers answering the very same bytes (`surge-loadtest ceiling-serve`), driven by
# Debian's wrk, alternating Surge and the bare server, READS_ROUNDS times each.
#
#   loadtests/reads.sh SURGE_BIN LT_BIN [BASELINE_BIN]
#
# With BASELINE_BIN (an earlier build of surge), a second node runs it beside the
# first, and each round measures both against the same bare-server run, in the order
# Surge, bare, baseline in odd rounds and baseline, bare, Surge in even ones: a
# before-and-after in one run.
#
# Runs once per log level of READS_LEVELS (default "info warn": info is the production
# default of SURGE_LOG, and the request span is only built when it is enabled), each on
# a node of its own (loadtests/node.sh, SURGE_WORKERS=2) on a database of its own.
# READS_WRK (default "-t1 -c64"), READS_DURATION (default 8s), READS_ROUNDS (default 2).
# Prints two Markdown tables, req/s and the servers' CPU time per request (from /proc,
# steadier than req/s on a shared machine); the raw wrk outputs go to
# artifacts/loadtest/reads/.
# Every process it starts is stopped, and every database dropped, on any exit.

set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=loadtests/node.sh
source "$ROOT/loadtests/node.sh"

[ $# -eq 2 ] || [ $# -eq 3 ] || { sed -n '2,20s/^# \{0,1\}//p' "$0" >&2; exit 2; }
SURGE_BIN=$1 LT_BIN=$2 BASELINE_BIN=${3:-}
[ -x "$LT_BIN" ] || die "$LT_BIN is not an executable (build it first)"
have wrk || die "wrk is missing (apt-get install -y wrk)"
have curl || die "curl is missing"

LEVELS=${READS_LEVELS:-info warn}
DURATION=${READS_DURATION:-8s}
ROUNDS=${READS_ROUNDS:-2}
read -r -a WRK_ARGS <<<"${READS_WRK:--t1 -c64}"
OUT=$ROOT/artifacts/loadtest/reads
mkdir -p "$OUT"
export SURGE_WORKERS=2

# CPU time (user + system) process $1 has used, in clock ticks, from /proc.
cpu_ticks() {
  sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# wrk's req/s of one run against the server of pid $2; its full output is kept in
# $OUT/$1.txt, and the server's CPU time per request, in µs, in $OUT/$1.cpu: unlike
# req/s, it barely moves with what else the machine runs.
run_wrk() {
  local name=$1 pid=$2 before after
  shift 2
  before=$(cpu_ticks "$pid")
  wrk "${WRK_ARGS[@]}" -d"$DURATION" "$@" >"$OUT/$name.txt" 2>&1 || {
    cat "$OUT/$name.txt" >&2
    die "wrk failed: $*"
  }
  after=$(cpu_ticks "$pid")
  if grep -q 'Socket errors\|Non-2xx' "$OUT/$name.txt"; then
    say "note: $name: $(grep 'Socket errors\|Non-2xx' "$OUT/$name.txt" | tr -s ' ')"
  fi
  awk -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" \
    '/ requests in / { printf "%.2f", 1e6 * ticks / hz / $1 }' "$OUT/$name.txt" >"$OUT/$name.cpu"
  awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$OUT/$name.txt"
}

# S as a percentage of C, one decimal.
ratio() { awk -v s="$1" -v c="$2" 'BEGIN { printf "%.1f", (c > 0) ? 100 * s / c : 0 }'; }
# The arguments joined by " / ".
joined() { local IFS=/; echo "$*" | sed 's#/# / #g'; }

ROWS=() CPU_ROWS=()
for level in $LEVELS; do
  say "---- SURGE_LOG=$level"
  SURGE_LOG=$level lt_node_start "$SURGE_BIN" "reads-$level"
  surge=$SURGE_LT_URL surge_pid=$LT_NODE_PID
  baseline="" baseline_pid=""
  if [ -n "$BASELINE_BIN" ]; then
    SURGE_LOG=$level lt_node_start "$BASELINE_BIN" "reads-baseline-$level"
    baseline=$SURGE_LT_URL baseline_pid=$LT_NODE_PID
  fi
  ceiling_log=$OUT/ceiling-$level.log
  : >"$ceiling_log"
  start_bg "the bare server" "$ceiling_log" "$LT_BIN" ceiling-serve --url "$surge" --duration 1h
  ceiling_pid=$BG_PID
  for _ in $(seq 1 100); do
    ceiling=$(head -n 1 "$ceiling_log")
    [[ "$ceiling" == http://* ]] && break
    kill -0 "$ceiling_pid" 2>/dev/null || { cat "$ceiling_log" >&2; die "ceiling-serve exited"; }
    sleep 0.1
  done
  [[ "$ceiling" == http://* ]] || die "ceiling-serve printed no address"
  say "$(sed -n 2p "$ceiling_log")"

  slug=$(curl -sf "$surge/api/products?limit=1" | sed -n 's/.*"slug":"\([^"]*\)".*/\1/p' | head -n 1)
  etag=$(curl -sfI "$surge/" | tr -d '\r' | sed -n 's/^etag: //Ip')
  [ -n "$slug" ] && [ -n "$etag" ] || die "no product slug or page ETag from $surge"
  # Same bytes, same statuses, or the comparison means nothing.
  for path in "/api/products/$slug" "/api/products?limit=24" "/"; do
    a=$(curl -sf "$surge$path" | wc -c)
    b=$(curl -sf "$ceiling$path" | wc -c)
    [ "$a" = "$b" ] || die "$path: Surge answers $a bytes, the bare server $b"
  done
  for base in "$surge" "$ceiling"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $etag" "$base/")
    [ "$code" = 304 ] || die "$base/ with If-None-Match: $etag answers $code, not 304"
  done

  for what in product list page304; do
    case $what in
      product) path="/api/products/$slug" hdr=() label="GET /api/products/{slug} ($a B)" ;;
      list) path="/api/products?limit=24" hdr=() label="GET /api/products?limit=24" ;;
      page304) path="/" hdr=(-H "If-None-Match: $etag") label="GET / If-None-Match (304)" ;;
    esac
    [ "$what" != product ] || label="GET /api/products/{slug} ($(curl -sf "$surge$path" | wc -c) B)"
    [ "$what" != list ] || label="GET /api/products?limit=24 ($(curl -sf "$surge$path" | wc -c) B)"
    s_all=() c_all=() r_all=() b_all=() br_all=()
    sc_all=() cc_all=() rc_all=() bc_all=() brc_all=()
    for round in $(seq 1 "$ROUNDS"); do
      b=""
      if [ -n "$baseline" ] && [ $((round % 2)) -eq 0 ]; then
        b=$(run_wrk "$level-$what-baseline-$round" "$baseline_pid" "${hdr[@]}" "$baseline$path")
      fi
      s=$(run_wrk "$level-$what-surge-$round" "$surge_pid" "${hdr[@]}" "$surge$path")
      c=$(run_wrk "$level-$what-bare-$round" "$ceiling_pid" "${hdr[@]}" "$ceiling$path")
      if [ -n "$baseline" ] && [ $((round % 2)) -eq 1 ]; then
        b=$(run_wrk "$level-$what-baseline-$round" "$baseline_pid" "${hdr[@]}" "$baseline$path")
      fi
      sc=$(cat "$OUT/$level-$what-surge-$round.cpu") cc=$(cat "$OUT/$level-$what-bare-$round.cpu")
      say "$level $what round $round: Surge $s req/s ($sc µs CPU each), bare $c req/s ($cc µs)${b:+, baseline $b req/s ($(cat "$OUT/$level-$what-baseline-$round.cpu") µs)}"
      s_all+=("$s") c_all+=("$c") sc_all+=("$sc") cc_all+=("$cc")
      r_all+=("$(ratio "$s" "$c")")
      # CPU per request the other way round: the bare server's share of Surge's.
      rc_all+=("$(ratio "$cc" "$sc")")
      if [ -n "$b" ]; then
        bc=$(cat "$OUT/$level-$what-baseline-$round.cpu")
        b_all+=("$b") br_all+=("$(ratio "$b" "$c")")
        bc_all+=("$bc") brc_all+=("$(ratio "$cc" "$bc")")
      fi
    done
    row="| $level | $label | $(joined "${s_all[@]}") | $(joined "${c_all[@]}") | $(joined "${r_all[@]}") % |"
    [ -z "$baseline" ] || row+=" $(joined "${b_all[@]}") | $(joined "${br_all[@]}") % |"
    ROWS+=("$row")
    row="| $level | $label | $(joined "${sc_all[@]}") | $(joined "${cc_all[@]}") | $(joined "${rc_all[@]}") % |"
    [ -z "$baseline" ] || row+=" $(joined "${bc_all[@]}") | $(joined "${brc_all[@]}") % |"
    CPU_ROWS+=("$row")
  done
  stop_pid "$ceiling_pid" "the bare server"
  [ -z "$baseline_pid" ] || stop_pid "$baseline_pid" "the baseline node"
  stop_pid "$surge_pid" "the node"
done

echo
echo "wrk ${WRK_ARGS[*]} -d$DURATION, alternating Surge${BASELINE_BIN:+, the baseline} and the bare server (2 workers each), $ROUNDS rounds; $(nproc) cores"
echo
if [ -n "$BASELINE_BIN" ]; then
  echo "| SURGE_LOG | request | Surge req/s | bare req/s | Surge / bare | baseline req/s | baseline / bare |"
  echo "|---|---|---:|---:|---:|---:|---:|"
else
  echo "| SURGE_LOG | request | Surge req/s | bare req/s | Surge / bare |"
  echo "|---|---|---:|---:|---:|"
fi
printf '%s\n' "${ROWS[@]}"
echo
echo "Server CPU time per request (user + system, from /proc, over each wrk run), in µs; the"
echo "ratio is the bare server's CPU per request over Surge's, the same way round as req/s:"
echo
if [ -n "$BASELINE_BIN" ]; then
  echo "| SURGE_LOG | request | Surge µs | bare µs | bare / Surge | baseline µs | bare / baseline |"
  echo "|---|---|---:|---:|---:|---:|---:|"
else
  echo "| SURGE_LOG | request | Surge µs | bare µs | bare / Surge |"
  echo "|---|---|---:|---:|---:|"
fi
printf '%s\n' "${CPU_ROWS[@]}"
