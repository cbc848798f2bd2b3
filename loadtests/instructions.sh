#!/usr/bin/env bash
# Instructions per request of a node, counted by valgrind's callgrind: a figure that,
# unlike req/s on a shared machine, repeats for the same binary and requests.
#
#   loadtests/instructions.sh SURGE_BIN [LT_BIN]
#
# Starts SURGE_BIN serve under callgrind with one worker on a database of its own
# (loadtests/node.sh, demo store), warms each request up, then for each request zeroes
# the counters, sends INSTR_REQUESTS (default 2000) of it over one keep-alive
# connection, dumps the counters and prints the instructions per request. With LT_BIN,
# it counts `LT_BIN ceiling-serve` (the bare actix-web handler serving the same bytes)
# the same way, for the ratio. SURGE_LOG as for any node (default here: info, the
# production default). Each request is sent as wrk sends it, with no Accept-Encoding,
# and the product and list once more as a browser asks for them, compressed. The dumps stay in artifacts/loadtest/instructions/ for
# `callgrind_annotate`.
#
# With INSTR_WRITES=1 it also counts a durable-write cycle: a new shopper reserving one
# unit (PUT /api/cart/items/{sku}) and checking it out, 400 times one after another
# (so every Journal batch holds one write), the node's link to PostgreSQL as
# loadtests/node.sh makes it (sslmode=prefer: TLS where the server offers it).
#
# Needs SURGE_PG_URL (source .local/services.env), valgrind and python3.

set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=loadtests/node.sh
source "$ROOT/loadtests/node.sh"

[ $# -ge 1 ] || { sed -n '2,15s/^# \{0,1\}//p' "$0" >&2; exit 2; }
SURGE_BIN=$(realpath "$1")
LT_BIN=${2:+$(realpath "$2")}
have valgrind || apt_install valgrind
have callgrind_control || die "callgrind_control is missing (valgrind package)"
have python3 || die "python3 is missing"
N=${INSTR_REQUESTS:-2000}
OUT=$ROOT/artifacts/loadtest/instructions
mkdir -p "$OUT"
export SURGE_WORKERS=1 SURGE_LOG=${SURGE_LOG:-info}

# The node's `serve` runs under callgrind with collection off until zeroed; `seed` runs
# plainly (node.sh calls the same binary for both).
wrapper=$OUT/surge-under-callgrind
cat >"$wrapper" <<EOF
#!/usr/bin/env bash
if [ "\$1" = serve ]; then
  exec valgrind --tool=callgrind --callgrind-out-file="$OUT/surge.%p.out" \\
    --dump-instr=no --collect-jumps=no "$SURGE_BIN" "\$@"
fi
exec "$SURGE_BIN" "\$@"
EOF
chmod +x "$wrapper"
rm -f "$OUT"/*.out "$OUT"/*.out.*

# Sends N GETs of PATH (with HEADER: VALUE pairs, and Host alone besides, as wrk does)
# over one keep-alive connection and checks each answer's status.
send() {
  python3 - "$@" <<'PY'
import http.client, sys, urllib.parse
base, path, n, status = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
headers = dict(h.split(": ", 1) for h in sys.argv[5:])
u = urllib.parse.urlsplit(base)
c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
for _ in range(n):
    # As wrk sends it: no Accept-Encoding unless asked for.
    c.putrequest("GET", path, skip_accept_encoding=True)
    for name, value in headers.items():
        c.putheader(name, value)
    c.endheaders()
    r = c.getresponse()
    r.read()
    if r.status != status:
        sys.exit(f"{path}: {r.status}, expected {status}")
PY
}

# N cycles of a new shopper (no cookie) reserving one unit of one of SKUS (comma
# separated, taken in turn) and checking it out: PUT then POST /api/checkout.
cycles() {
  python3 - "$@" <<'PY'
import http.client, json, sys, urllib.parse, uuid
base, n, skus = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
u = urllib.parse.urlsplit(base)
c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
done = 0
while done < n:
    sku = skus[done % len(skus)]
    c.request("PUT", f"/api/cart/items/{sku}", body='{"quantity":1}',
              headers={"content-type": "application/json"})
    r = c.getresponse(); body = r.read()
    if r.status == 409 and len(skus) > 1:
        # Not for sale now (a campaign's SKU outside its window): leave it out.
        skus.remove(sku)
        continue
    if r.status != 200:
        sys.exit(f"PUT {sku}: {r.status} {body[:200]!r}")
    cookie = r.getheader("set-cookie").split(";")[0]
    c.request("POST", "/api/checkout", body='{"email":"bench@example.com"}',
              headers={"content-type": "application/json", "cookie": cookie,
                       "idempotency-key": str(uuid.uuid4())})
    r = c.getresponse(); r.read()
    if r.status != 201:
        sys.exit(f"checkout: {r.status}")
    done += 1
PY
}

# Instructions PID's process ran while COMMAND... ran, after zeroing its counters; the
# dump is kept as $OUT/NAME.out.
measured() {
  local pid=$1 name=$2
  shift 2
  callgrind_control -z "$pid" >/dev/null 2>&1
  "$@"
  callgrind_control -d "$name" "$pid" >/dev/null 2>&1
  local file total
  file=$(ls -t "$OUT"/*.out.* | head -n 1)
  mv "$file" "$OUT/$name.out"
  total=$(callgrind_annotate "$OUT/$name.out" 2>/dev/null |
    awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
  [ -n "$total" ] || die "no totals in $OUT/$name.out"
  echo "$total"
}

# Instructions of PID's process per request of PATH.
count() {
  local pid=$1 base=$2 name=$3 path=$4 status=$5
  shift 5
  send "$base" "$path" 200 "$status" "$@"
  local total
  total=$(measured "$pid" "$name" send "$base" "$path" "$N" "$status" "$@")
  echo $((total / N))
}

SURGE_LOG=$SURGE_LOG lt_node_start "$wrapper" "instructions"
surge=$SURGE_LT_URL
slug=$(curl -sf "$surge/api/products?limit=1" | sed -n 's/.*"slug":"\([^"]*\)".*/\1/p' | head -n 1)
etag=$(curl -sfI "$surge/" | tr -d '\r' | sed -n 's/^etag: //Ip')
[ -n "$slug" ] && [ -n "$etag" ] || die "no product slug or page ETag from $surge"
# callgrind's own pid is the node's: valgrind execs in place.
node_pid=$SURGE_LT_SERVER_PID

bare_pid=""
if [ -n "$LT_BIN" ]; then
  bare_log=$OUT/ceiling.log
  : >"$bare_log"
  start_bg "the bare server" "$bare_log" valgrind --tool=callgrind \
    --callgrind-out-file="$OUT/bare.%p.out" --log-file="$OUT/bare-valgrind.log" \
    --dump-instr=no --collect-jumps=no "$LT_BIN" ceiling-serve --url "$surge" --duration 1h
  bare_pid=$BG_PID
  for _ in $(seq 1 600); do
    bare=$(grep -m 1 '^http://' "$bare_log" || true)
    [[ "$bare" == http://* ]] && break
    sleep 0.1
  done
  [[ "$bare" == http://* ]] || die "ceiling-serve printed no address"
fi

printf '| request | Surge (SURGE_LOG=%s) |%s\n' "$SURGE_LOG" "${bare_pid:+ bare handler | ratio |}"
printf '|---|---:|%s\n' "${bare_pid:+---:|---:|}"
for spec in "product|/api/products/$slug|200" "list-24|/api/products?limit=24|200" \
  "page-304|/|304|If-None-Match: $etag" \
  "product-gzip|/api/products/$slug|200|Accept-Encoding: gzip, deflate, br" \
  "list-24-gzip|/api/products?limit=24|200|Accept-Encoding: gzip, deflate, br"; do
  IFS='|' read -r name path status header <<<"$spec"
  args=()
  [ -z "${header:-}" ] || args=("$header")
  s=$(count "$node_pid" "$surge" "surge-$name" "$path" "$status" "${args[@]}")
  if [ -n "$bare_pid" ]; then
    b=$(count "$bare_pid" "$bare" "bare-$name" "$path" "$status" "${args[@]}")
    printf '| %s | %s | %s | %s %% |\n' "$name" "$s" "$b" "$(awk -v s="$s" -v b="$b" 'BEGIN { printf "%.1f", 100 * b / s }')"
  else
    printf '| %s | %s |\n' "$name" "$s"
  fi
done

if [ "${INSTR_WRITES:-0}" = 1 ]; then
  # Durable writes: instructions per cycle of reserving one unit and checking it out,
  # the Journal and its PostgreSQL round trips included (batches of one here).
  skus=$(curl -sf "$surge/api/products?limit=100" | python3 -c '
import json, sys
print(",".join(v["sku"] for p in json.load(sys.stdin)["items"] for v in p["variants"] if v["available"] > 5))')
  [ -n "$skus" ] || die "no SKU with stock"
  cycles "$surge" 50 "$skus"
  total=$(measured "$node_pid" surge-writes cycles "$surge" 400 "$skus")
  printf '| PUT + checkout (a cycle) | %s |\n' "$((total / 400))"
fi
