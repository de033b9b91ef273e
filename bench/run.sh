#!/usr/bin/env bash
# sluice benchmark: upstream direct vs nginx reverse proxy vs sluice (full
# path: key check, quota reservation, routing, billing, ledger row), all on
# loopback, measured in one run so the ratios hold on a noisy machine.
#
#   bench/run.sh            # SQLite store, ~2 minutes
#   bench/run.sh --pg       # PostgreSQL store (SLUICE_BENCH_PG or local test db)
#   bench/run.sh --long     # also 1M requests with RSS sampled along the way
#
# Needs: nginx and wrk (installed from Debian's packages if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

PG=0; LONG=0
for a in "$@"; do
  case "$a" in
    --pg) PG=1 ;;
    --long) LONG=1 ;;
    *) echo "unknown flag $a" >&2; exit 2 ;;
  esac
done

DUR=${BENCH_SECONDS:-10}
RATE=${BENCH_RATE:-2000}
CONNS=${BENCH_CONNS:-32}
MOCK_PORT=18081; NGINX_PORT=18082; SLUICE_PORT=18083
WORK=$(mktemp -d /tmp/sluice-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need wrk; then
  echo "installing nginx-light and wrk from Debian's packages..." >&2
  apt-get install -y -q nginx-light wrk >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

echo "building release binaries..." >&2
cargo build --release --bins -q
BIN=target/release

wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; then exec 3>&- 3<&-; return 0; fi
    sleep 0.05
  done
  echo "port $1 did not open" >&2; exit 1
}

# --- upstream mock ---------------------------------------------------------
"$BIN/sluice-mock" 127.0.0.1:$MOCK_PORT > "$WORK/mock.log" 2>&1 &
PIDS+=($!)
wait_port $MOCK_PORT

# --- nginx as a plain reverse proxy -----------------------------------------
cat > "$WORK/nginx.conf" <<EOF
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
daemon on;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx-body;
  proxy_temp_path $WORK/nginx-proxy;
  upstream up { server 127.0.0.1:$MOCK_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
"$NGINX" -c "$WORK/nginx.conf" -p "$WORK"
wait_port $NGINX_PORT

# --- sluice ------------------------------------------------------------------
ROOT_TOKEN=benchroottoken0123456789abcdefgh
DSN=""
if [ "$PG" = 1 ]; then
  PGURL=${SLUICE_BENCH_PG:-postgres://postgres@127.0.0.1:5432/test}
  DB=sluice_bench_$$
  psql "$PGURL" -q -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" >/dev/null
  DSN="${PGURL%/*}/$DB"
fi
PORT=$SLUICE_PORT BIND_ADDR=127.0.0.1 SLUICE_DATA_DIR="$WORK/data" SQL_DSN="$DSN" \
  INITIAL_ROOT_PASSWORD=bench-password INITIAL_ROOT_ACCESS_TOKEN=$ROOT_TOKEN LOG_LEVEL=warn \
  "$BIN/sluice" > "$WORK/sluice.log" 2>&1 &
SLUICE_PID=$!
PIDS+=($SLUICE_PID)
wait_port $SLUICE_PORT
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$SLUICE_PID/status"; }

api() { # method path [json]
  curl -sf -X "$1" "http://127.0.0.1:$SLUICE_PORT$2" -H "Authorization: Bearer $ROOT_TOKEN" \
    -H "New-Api-User: 1" -H 'Content-Type: application/json' ${3:+-d "$3"}
}
MODEL=bench-model
api PUT /api/option/ "{\"key\":\"ModelRatio\",\"value\":\"{\\\"$MODEL\\\":1,\\\"bench-nousage\\\":1}\"}" >/dev/null
api PUT /api/option/ "{\"key\":\"CompletionRatio\",\"value\":\"{\\\"$MODEL\\\":1}\"}" >/dev/null
api PUT /api/user/ '{"id":1,"quota":1000000000000}' >/dev/null
api POST /api/channel/ "{\"type\":1,\"name\":\"mock\",\"key\":\"ok\",\"base_url\":\"http://127.0.0.1:$MOCK_PORT\",\"models\":\"$MODEL\"}" >/dev/null
# An upstream that never reports usage: one call to it makes sluice count
# tokens itself, which loads tiktoken's vocabulary (~30-40 MB) before the load
# phases, so RSS under load always includes it (otherwise it depended on
# whether wrk happened to cut a stream before its usage event).
api POST /api/channel/ "{\"type\":1,\"name\":\"no-usage\",\"key\":\"no-usage\",\"base_url\":\"http://127.0.0.1:$MOCK_PORT\",\"models\":\"bench-nousage\"}" >/dev/null
WARM_KEY=sk-$(api POST /api/token/ '{"name":"warm","remain_quota":1000000000}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["key"])')
TOKEN_JSON=$(api POST /api/token/ '{"name":"bench","remain_quota":1000000000000}')
KEY=sk-$(echo "$TOKEN_JSON" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["key"])')
TOKEN_ID=$(echo "$TOKEN_JSON" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["id"])')
# Idle: after the start-up's transient memory is gone (hashing the root
# password at first start takes ~19 MiB on a blocking thread, returned when
# that thread idles out after 2 s).
sleep 3
RSS_IDLE=$(rss_kb)
curl -sf "http://127.0.0.1:$SLUICE_PORT/v1/chat/completions" -H "Authorization: Bearer $WARM_KEY" \
  -H 'Content-Type: application/json' -d '{"model":"bench-nousage","messages":[{"role":"user","content":"hi"}]}' >/dev/null

# Request bodies: the mock reports 10 prompt + min(max_tokens,20) completion
# tokens, so each call costs 10 + 16 = 26 quota at ratio 1.
COST=26
printf '{"model":"%s","max_tokens":16,"messages":[{"role":"user","content":"Say hello."}]}' $MODEL > "$WORK/body.json"
printf '{"model":"%s","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"Say hello."}]}' $MODEL > "$WORK/stream.json"

cat > "$WORK/post.lua" <<'EOF'
wrk.method = "POST"
local f = io.open(os.getenv("BODY"), "r")
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("KEY")
if key and key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK requests=%d duration_us=%d sockerr=%d non2xx=%d p50_us=%d p99_us=%d p999_us=%d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
EOF

SLUICE_CALLS=0
TCK=$(getconf CLK_TCK)
cpu_ticks() { local t=0; for p in $1; do t=$(( t + $(awk '{print $14+$15}' "/proc/$p/stat") )); done; echo $t; }
# wrk_run name url body key [pids] -> "name rps p50 p99 p999 requests non2xx cpu_us_per_request"
wrk_run() {
  local out c0=0 c1=0
  [ -n "${5:-}" ] && c0=$(cpu_ticks "$5")
  out=$(BODY="$3" KEY="$4" wrk -t1 -c"$CONNS" -d"${DUR}s" -s "$WORK/post.lua" "$2" | grep '^WRK')
  [ -n "${5:-}" ] && c1=$(cpu_ticks "$5")
  local req dur sock non p50 p99 p999
  req=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$out"); dur=$(sed -E 's/.*duration_us=([0-9]+).*/\1/' <<<"$out")
  sock=$(sed -E 's/.*sockerr=([0-9]+).*/\1/' <<<"$out"); non=$(sed -E 's/.*non2xx=([0-9]+).*/\1/' <<<"$out")
  p50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$out"); p99=$(sed -E 's/.*p99_us=([0-9]+) .*/\1/' <<<"$out")
  p999=$(sed -E 's/.*p999_us=([0-9]+).*/\1/' <<<"$out")
  if [ "$sock" != 0 ] || [ "$non" != 0 ]; then echo "$1: $sock socket errors, $non non-2xx" >&2; fi
  echo "$1 $(( req * 1000000 / dur )) $p50 $p99 $p999 $req $non $(( (c1 - c0) * 1000000 / TCK * 10 / (req > 0 ? req : 1) ))"
}

echo "warming up..." >&2
W=$(wrk_run warm "http://127.0.0.1:$SLUICE_PORT/v1/chat/completions" "$WORK/body.json" "$KEY")
SLUICE_CALLS=$(( SLUICE_CALLS + $(awk '{print $6 - $7}' <<<"$W") ))
wrk_run warm-direct "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" "$WORK/body.json" "" >/dev/null
wrk_run warm-nginx "http://127.0.0.1:$NGINX_PORT/v1/chat/completions" "$WORK/body.json" "" >/dev/null

echo "closed loop: wrk -t1 -c$CONNS -d${DUR}s..." >&2
MOCK_PID=${PIDS[0]}
NGINX_PIDS="$(cat "$WORK/nginx.pid") $(pgrep -P "$(cat "$WORK/nginx.pid")" | tr '\n' ' ')"
R_DIRECT=$(wrk_run direct "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" "$WORK/body.json" "" "$MOCK_PID")
R_NGINX=$(wrk_run nginx "http://127.0.0.1:$NGINX_PORT/v1/chat/completions" "$WORK/body.json" "" "$NGINX_PIDS")
RSS_MAX=0
( while kill -0 $SLUICE_PID 2>/dev/null; do r=$(rss_kb); echo "$r"; sleep 0.5; done ) > "$WORK/rss.txt" &
SAMPLER=$!
R_SLUICE=$(wrk_run sluice "http://127.0.0.1:$SLUICE_PORT/v1/chat/completions" "$WORK/body.json" "$KEY" "$SLUICE_PID")
SLUICE_CALLS=$(( SLUICE_CALLS + $(awk '{print $6 - $7}' <<<"$R_SLUICE") ))
R_DIRECT_S=$(wrk_run direct-stream "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" "$WORK/stream.json" "")
R_SLUICE_S=$(wrk_run sluice-stream "http://127.0.0.1:$SLUICE_PORT/v1/chat/completions" "$WORK/stream.json" "$KEY" "$SLUICE_PID")
SLUICE_CALLS=$(( SLUICE_CALLS + $(awk '{print $6 - $7}' <<<"$R_SLUICE_S") ))
kill $SAMPLER 2>/dev/null || true
RSS_MAX=$(sort -n "$WORK/rss.txt" | tail -1)

echo "open loop: $RATE requests/s for ${DUR}s..." >&2
loadgen() { "$BIN/sluice-loadgen" "$1" "$2" "$RATE" "$DUR" "${3:-}"; }
field() { sed -E "s/.*$1=([0-9.]+).*/\1/" <<<"$2"; }
L_DIRECT=$(loadgen "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" "$WORK/body.json")
L_NGINX=$(loadgen "http://127.0.0.1:$NGINX_PORT/v1/chat/completions" "$WORK/body.json")
L_SLUICE=$(loadgen "http://127.0.0.1:$SLUICE_PORT/v1/chat/completions" "$WORK/body.json" "$KEY")
SLUICE_CALLS=$(( SLUICE_CALLS + $(field ok "$L_SLUICE") ))
L_DIRECT_S=$(loadgen "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" "$WORK/stream.json")
L_SLUICE_S=$(loadgen "http://127.0.0.1:$SLUICE_PORT/v1/chat/completions" "$WORK/stream.json" "$KEY")
SLUICE_CALLS=$(( SLUICE_CALLS + $(field ok "$L_SLUICE_S") ))

RSS_LONG=""
if [ "$LONG" = 1 ]; then
  echo "long run: 1,000,000 requests with RSS sampled..." >&2
  : > "$WORK/rss-long.txt"
  ( while kill -0 $SLUICE_PID 2>/dev/null; do rss_kb >> "$WORK/rss-long.txt"; sleep 2; done ) &
  SAMPLER=$!
  LEFT=1000000
  while [ $LEFT -gt 0 ]; do
    R=$(BODY="$WORK/body.json" DUR=10 wrk_run long "http://127.0.0.1:$SLUICE_PORT/v1/chat/completions" "$WORK/body.json" "$KEY")
    N=$(awk '{print $6 - $7}' <<<"$R"); SLUICE_CALLS=$(( SLUICE_CALLS + N )); LEFT=$(( LEFT - N ))
  done
  kill $SAMPLER 2>/dev/null || true
  # Ignore the first two samples (warm-up of the long run).
  RSS_LONG=$(tail -n +3 "$WORK/rss-long.txt" | sort -n | awk 'NR==1{min=$1} {max=$1} END{printf "%d %d", min, max}')
fi

# --- every request billed ----------------------------------------------------
sleep 1   # the ledger writer commits every 50 ms
ROWS=$(api GET "/api/log/?type=2&token_name=bench&page_size=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["total"])')
# Calls sluice answered and billed, by its own count (wrk does not count the
# requests in flight when its timer ends, sluice answers them all the same).
SETTLED=$(curl -sf "http://127.0.0.1:$SLUICE_PORT/metrics" | awk -F' ' '/^sluice_relay_requests_total\{outcome="settled"\}/ {print $2}')
USED=$(api GET "/api/token/$TOKEN_ID" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["used_quota"])')
# What the rows charged, summed: streams the clients cut at their deadline are
# billed for what was streamed, less than a whole call.
CHARGED=$(api GET "/api/log/stat?type=2&token_name=bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["quota"])')

# --- report ------------------------------------------------------------------
python3 - "$R_DIRECT" "$R_NGINX" "$R_SLUICE" "$R_DIRECT_S" "$R_SLUICE_S" \
  "$L_DIRECT" "$L_SLUICE" "$L_DIRECT_S" "$L_SLUICE_S" \
  "$RSS_IDLE" "$RSS_MAX" "$ROWS" "$USED" "$SLUICE_CALLS" "$COST" "$CONNS" "$DUR" "$RATE" "$PG" "$RSS_LONG" "$SETTLED" "$CHARGED" \
  "$L_NGINX" <<'PY'
import sys, re
a = sys.argv[1:]
def wrk(s):
    n = s.split()
    return dict(name=n[0], rps=int(n[1]), p50=int(n[2]), p99=int(n[3]), p999=int(n[4]), cpu=int(n[7]) / 10)
def lg(s):
    return {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", s)}
d, ng, sl, ds, ss = map(wrk, a[0:5])
ld, lsl, lds, lss = map(lg, a[5:9])
rss_idle, rss_max = int(a[9]) / 1024, int(a[10]) / 1024
rows, used, calls, cost = int(a[11]), int(a[12]), int(a[13]), int(a[14])
conns, dur, rate, pg, rss_long = a[15], a[16], a[17], a[18] == "1", a[19]
settled = int(float(a[20] or 0)) - 1  # less the warm-up call (token "warm")
charged = int(a[21])
lng = lg(a[22])
store = "PostgreSQL" if pg else "SQLite"
ms = lambda us: f"{us/1000:.2f}"
print(f"\nsluice benchmark — wrk -t1 -c{conns} -d{dur}s, POST /v1/chat/completions, store {store}\n")
print(f"{'target':<16}{'RPS':>9}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'CPU us/req':>12}")
for r in (d, ng, sl, ds, ss):
    cpu = f"{r['cpu']:.1f}" if r['cpu'] else "-"
    print(f"{r['name']:<16}{r['rps']:>9}{ms(r['p50']):>9}{ms(r['p99']):>9}{ms(r['p999']):>10}{cpu:>12}")
print("(CPU us/req: the proxy's own CPU per request: mock for direct, nginx workers, sluice)")
print()
print(f"sluice / nginx  throughput {sl['rps']/ng['rps']:.2f}x   p99 {ms(sl['p99'])} vs {ms(ng['p99'])} ms (delta {ms(sl['p99']-ng['p99'])} ms)")
print(f"sluice / direct throughput {sl['rps']/d['rps']:.2f}x   stream vs direct stream {ss['rps']/ds['rps']:.2f}x")
print(f"\nopen loop at {rate} req/s (latency added over direct):")
print(f"  non-stream p50 +{(lsl['p50_us']-ld['p50_us']):.0f} us   p99 +{(lsl['p99_us']-ld['p99_us'])/1000:.2f} ms   (sluice p50 {lsl['p50_us']:.0f} us, p99 {lsl['p99_us']/1000:.2f} ms; failed {lsl['failed']:.0f})")
print(f"  (nginx for reference: p50 +{(lng['p50_us']-ld['p50_us']):.0f} us   p99 +{(lng['p99_us']-ld['p99_us'])/1000:.2f} ms)")
print(f"  stream TTFB p50 +{(lss['ttfb_p50_us']-lds['ttfb_p50_us']):.0f} us   p99 +{(lss['ttfb_p99_us']-lds['ttfb_p99_us'])/1000:.2f} ms")
print(f"\nsluice RSS: idle {rss_idle:.1f} MB, under load max {rss_max:.1f} MB")
if rss_long:
    lo, hi = (int(x)/1024 for x in rss_long.split())
    print(f"1M-request run RSS: min {lo:.1f} MB, max {hi:.1f} MB, spread {(hi-lo)/lo*100:.1f}%")
# Every call is billed once: one row per answered call, and the token's
# used_quota is exactly what the rows charged. A row charges `cost` unless its
# stream was cut by the client at its deadline (at most one per connection of
# the closed-loop stream run, plus the few in flight when the open loop ends).
short = rows * cost - charged
cut_bound = (2 * int(conns) + 64) * cost
ok = rows == settled and used == charged and calls <= settled and 0 <= short <= cut_bound
print(f"\nledger: {rows} rows = {settled} calls answered by sluice ({calls} counted by the clients, which miss the ones in flight at their deadline)")
print(f"        used_quota {used} = rows' quota {charged} = rows x {cost} - {short} (streams cut at the clients' deadline): {'OK' if ok else 'MISMATCH'}")
sys.exit(0 if ok else 1)
PY
