#!/usr/bin/env bash
# Fresh starts under a connect burst (issue #14's reproduction): RUNS times,
# a gateway on a new data directory, then at once
# `loadgen --threads 2 chat --pairs 500 --rate 2000 --window 10000 --duration 2s`.
# Prints each run's wall time, connect errors and connect max, then the
# worst connect, the number of runs with a connect of 10 s or more
# (loadgen retries a connect after 30 s, so a lost wake-up shows as ~30 s)
# and the number of loadgen runs that did not finish within 120 s.
#
#   benchmarks/fresh-start.sh                 # 50 runs, release binaries
#   RUNS=10 BIN=target/release benchmarks/fresh-start.sh
#
# Knobs: RUNS (50), SHARDS (2), BUSY (0; 1 = two busy-loop processes
# share the cores), BIN (default: build with `cargo build --release`),
# WORK (default: a fresh temporary directory).
set -euo pipefail
RUNS=${RUNS:-50}
SHARDS=${SHARDS:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z "${BIN:-}" ]]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p gateway -p loadgen
    BIN="$root/target/release"
fi
WORK=${WORK:-$(mktemp -d -t fresh-start.XXXXXX)}
mkdir -p "$WORK"
. "$root/benchmarks/lib.sh"
gw=""
busy=()
cleanup() {
    [[ -n "$gw" ]] && kill -9 "$gw" 2>/dev/null || true
    for p in "${busy[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
if [[ "${BUSY:-0}" == 1 ]]; then
    for _ in 1 2; do (while :; do :; done) & busy+=($!); done
fi

worst=0 stalls=0 hangs=0 timeouts=0
for run in $(seq 1 "$RUNS"); do
    data="$WORK/data-$run"; rm -rf "$data"
    port=$(free_port); admin=$(free_port)
    RUST_LOG=warn "$BIN/gateway" serve --shards "$SHARDS" --listen "127.0.0.1:$port" \
        --admin-listen "127.0.0.1:$admin" --data-dir "$data" \
        --sends-per-s 1000000 --send-bytes-per-s 1000000000 \
        $NO_ABUSE_LIMITS \
        >"$WORK/gateway.out" 2>"$WORK/gateway.err" &
    gw=$!
    ready=0
    for _ in $(seq 1 300); do
        grep -q '^ready' "$WORK/gateway.out" && { ready=1; break; }
        sleep 0.1
    done
    if [[ $ready == 0 ]]; then
        hangs=$((hangs + 1)); echo "run $run: the gateway did not start in 30 s"
        kill -9 "$gw"; wait "$gw" 2>/dev/null || true; gw=""; continue
    fi
    t0=$(date +%s.%N)
    rm -rf "$WORK/report"
    status=0
    timeout 120 "$BIN/loadgen" --addr "127.0.0.1:$port" --data-dir "$data" \
        --out "$WORK/report" --quiet --threads 2 \
        chat --pairs 500 --rate 2000 --window 10000 --duration 2s >/dev/null 2>&1 || status=$?
    wall=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
    if [[ $status == 124 ]]; then
        timeouts=$((timeouts + 1)); echo "run $run: loadgen did not finish in 120 s"
        kill -9 "$gw"; wait "$gw" 2>/dev/null || true; gw=""; continue
    fi
    read -r errors cmax < <(python3 - "$WORK/report/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(r["counters"].get("connect_errors", 0), r["latency_us"]["connect"]["max"] // 1000)
PY
)
    echo "run $run: wall ${wall} s, connect errors $errors, connect max ${cmax} ms"
    (( cmax > worst )) && worst=$cmax
    (( cmax >= 10000 )) && stalls=$((stalls + 1))
    kill -9 "$gw"; wait "$gw" 2>/dev/null || true; gw=""
    rm -rf "$data"
done
echo "fresh-start: $RUNS runs, worst connect ${worst} ms, connects of 10 s or more: $stalls, loadgen runs that did not finish in 120 s: $timeouts, starts that hung: $hangs"
