#!/usr/bin/env bash
# Instruction-count guard: counts the CPU instructions sluice executes per
# relayed call (callgrind: repeatable on a noisy machine, unlike time) over a
# fixed run of sequential non-stream calls, and fails when the count grows
# more than 15% over the figure recorded in bench/instructions.txt.
#
# The guard measures the binaries `cargo test` builds (dependencies optimised,
# sluice itself unoptimised), so in CI it costs no extra build: a release
# build with fat LTO took ~12 of CI's 28 minutes. Growth in sluice's own hot
# path shows up in this count at least as strongly as in a release build.
#
#   bench/instructions.sh             # check against the recorded figure
#   bench/instructions.sh --record    # write the new figure (a deliberate commit)
#   bench/instructions.sh --release   # print the release build's count (docs/performance.md)
#   bench/instructions.sh --profiling # the same build with symbols, and where its
#                                     # callgrind dump is, to find what a count is made of
set -euo pipefail
cd "$(dirname "$0")/.."

RECORD=0; RELEASE=0; PROFILING=0
case "${1:-}" in
  --record) RECORD=1 ;;
  --release) RELEASE=1 ;;
  --profiling) RELEASE=1; PROFILING=1 ;;
  "") ;;
  *) echo "usage: $0 [--record|--release|--profiling]" >&2; exit 2 ;;
esac
CALLS=${CALLS:-500}
LIMIT_PCT=15
FIGURE=bench/instructions.txt

if ! command -v valgrind >/dev/null 2>&1; then
  apt-get install -y -q valgrind >/dev/null
fi
if [ "$PROFILING" = 1 ]; then
  cargo build --profile profiling --bins -q
  BIN=${CARGO_TARGET_DIR:-target}/profiling
elif [ "$RELEASE" = 1 ]; then
  cargo build --release --bins -q
  BIN=${CARGO_TARGET_DIR:-target}/release
else
  # The test build's binaries (the same features and flags as `cargo test`,
  # so after the test run this builds nothing).
  cargo test --no-run -q
  BIN=${CARGO_TARGET_DIR:-target}/debug
fi
WORK=$(mktemp -d /tmp/sluice-icount.XXXXXX)
MOCK_PORT=18091; SLUICE_PORT=18093
cleanup() { kill "${VPID:-}" "${MPID:-}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 600); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; then exec 3>&- 3<&-; return 0; fi
    sleep 0.1
  done
  echo "port $1 did not open" >&2; exit 1
}

"$BIN/sluice-mock" 127.0.0.1:$MOCK_PORT >/dev/null 2>&1 &
MPID=$!
ROOT=icountroottoken0123456789abcdefgh
# One serving thread: the count then does not depend on how work was spread.
# Ledger batches of exactly 100 rows: with the 50 ms window, how rows fell
# into batches followed the machine's speed and moved the count by ±4 %
# between runs of the same build. With a window longer than the run, a batch
# is committed when its 100th row is queued, and CALLS is a multiple of 100.
BATCH=100
if (( CALLS % BATCH != 0 )); then echo "CALLS must be a multiple of $BATCH" >&2; exit 2; fi
SLUICE_SERVE_THREADS=1 LEDGER_MAX_BATCH=$BATCH LEDGER_WINDOW_MS=3600000 PORT=$SLUICE_PORT BIND_ADDR=127.0.0.1 SLUICE_DATA_DIR="$WORK/data" \
  INITIAL_ROOT_PASSWORD=icount-password INITIAL_ROOT_ACCESS_TOKEN=$ROOT LOG_LEVEL=warn \
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$BIN/sluice" >"$WORK/sluice.log" 2>&1 &
VPID=$!
wait_port $MOCK_PORT
wait_port $SLUICE_PORT

api() {
  curl -sf -X "$1" "http://127.0.0.1:$SLUICE_PORT$2" -H "Authorization: Bearer $ROOT" \
    -H "New-Api-User: 1" -H 'Content-Type: application/json' ${3:+-d "$3"}
}
api PUT /api/option/ '{"key":"ModelRatio","value":"{\"bench-model\":1}"}' >/dev/null
api PUT /api/user/ '{"id":1,"quota":1000000000000}' >/dev/null
api POST /api/channel/ "{\"type\":1,\"name\":\"mock\",\"key\":\"ok\",\"base_url\":\"http://127.0.0.1:$MOCK_PORT\",\"models\":\"bench-model\"}" >/dev/null
KEY=sk-$(api POST /api/token/ '{"name":"icount","remain_quota":1000000000000}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["key"])')
printf '{"model":"bench-model","max_tokens":16,"messages":[{"role":"user","content":"Say hello."}]}' > "$WORK/body.json"

# The ledger's rows, read from the database file (not through sluice, so
# reading adds nothing to the count); with a number, waits until there are
# exactly that many: then no batch is being written (the next one is not
# full), so zeroing and dumping happen with the writer idle. The setup's
# rows (manage logs, written at once) are counted first.
rows() {
  python3 - "$WORK/data/sluice.db" "${1:-}" <<'PY'
import sqlite3, sys, time
db, want = sys.argv[1], sys.argv[2]
def count():
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return c.execute("SELECT count(*) FROM logs").fetchone()[0]
    finally:
        c.close()
if not want:
    print(count())
    sys.exit(0)
want, deadline = int(want), time.time() + 300
while time.time() < deadline:
    n = count()
    if n == want:
        sys.exit(0)
    if n > want:
        sys.exit(f"the ledger holds {n} rows, not {want}")
    time.sleep(0.1)
sys.exit(f"the ledger did not reach {want} rows")
PY
}

URL="http://127.0.0.1:$SLUICE_PORT/v1/chat/completions"
SETUP_ROWS=$(rows)
"$BIN/sluice-loadgen" "$URL" "$WORK/body.json" 0 100 "$KEY" >/dev/null      # warm up
rows $(( SETUP_ROWS + BATCH ))
callgrind_control -z "$VPID" >/dev/null
"$BIN/sluice-loadgen" "$URL" "$WORK/body.json" 0 "$CALLS" "$KEY" | grep -q "ok=$CALLS "
rows $(( SETUP_ROWS + BATCH + CALLS ))
callgrind_control -d "$VPID" >/dev/null
DUMP=$(ls -t "$WORK"/cg.out.* | head -1)
TOTAL=$(awk '/^(summary|totals):/ {print $2; exit}' "$DUMP")
PER=$(( TOTAL / CALLS ))

if [ "$RELEASE" = 1 ]; then
  echo "instructions per relayed call (release build): $PER"
  if [ "$PROFILING" = 1 ]; then
    echo "callgrind dump: $DUMP (callgrind_annotate --threshold=100 --inclusive=yes $DUMP)"
  fi
  exit 0
fi
if [ "$RECORD" = 1 ]; then
  echo "$PER" > "$FIGURE"
  echo "recorded $PER instructions per call in $FIGURE"
  exit 0
fi
BASE=$(cat "$FIGURE")
MAX=$(( BASE * (100 + LIMIT_PCT) / 100 ))
echo "instructions per relayed call: $PER (recorded $BASE, limit $MAX)"
if [ "$PER" -gt "$MAX" ]; then
  echo "FAIL: the hot path grew more than ${LIMIT_PCT}% over bench/instructions.txt;" \
       "find the cost (docs/performance.md, Method: callgrind on the release build with symbols) or, if it is deliberate, record the new figure with --record" >&2
  exit 1
fi
