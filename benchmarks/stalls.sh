#!/usr/bin/env bash
# What else held a core when open-loop messages were slow (issue #17's
# tail): starts a gateway, runs `loadgen chat --rate RATE --slow-us SLOW_US`
# (every send slower than SLOW_US is logged with its monotonic times),
# records every context switch on the machine with `perf` over the same
# window, and prints which tasks outside the gateway and loadgen ran for
# BURST_MS or more at a stretch, and how many of the slow messages were
# in flight while one did, against the chance that an interval of the
# same length would be.
#
#   benchmarks/stalls.sh                       # 10,000 msgs/s, 500 pairs
#   RATE=20000 SLOW_US=5000 benchmarks/stalls.sh
#
# Knobs (environment): RATE (10000), PAIRS (500), SECS (12, after 4 s of
# warm-up; perf starts 3 s into the warm-up: its own start stalls the
# machine for a moment), SLOW_US (2000), BURST_MS (1), SHARDS (2), BIN
# (target/release), WORK (a fresh temporary directory). Needs `perf` with
# tracepoints (root).
set -euo pipefail

RATE=${RATE:-10000}
PAIRS=${PAIRS:-500}
SECS=${SECS:-12}
SLOW_US=${SLOW_US:-2000}
BURST_MS=${BURST_MS:-1}
SHARDS=${SHARDS:-2}
WARMUP=4
root=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(cd "${BIN:-$root/target/release}" && pwd)
WORK=${WORK:-$(mktemp -d)}
. "$root/benchmarks/lib.sh"

start_one_gateway

"$BIN/loadgen" --threads 2 --quiet --out "$WORK/loadgen" --slow-us "$SLOW_US" \
    chat --addr "127.0.0.1:$port" --data-dir "$data" --pairs "$PAIRS" \
    --rate "$RATE" --duration "$((WARMUP + SECS))s" --warmup "${WARMUP}s" \
    >"$WORK/loadgen.txt" 2>&1 &
load=$!
# Our threads, to tell them from everything else (the report counts the
# io_uring workers they start as theirs), once loadgen's are all up.
sleep 3
ls "/proc/$gw/task" "/proc/$load/task" | grep -E '^[0-9]+$' >"$WORK/ours.txt"
perf record -q -k CLOCK_MONOTONIC -e sched:sched_switch -a -o "$WORK/sched.data" \
    -- sleep "$((WARMUP + SECS - 3))" >/dev/null 2>&1
wait "$load"
perf script -i "$WORK/sched.data" -F cpu,time,trace >"$WORK/sched.txt" 2>/dev/null
rm -f "$WORK/sched.data"
grep -h send_to_delivered "$WORK"/loadgen/slow-*.tsv >"$WORK/slow.txt" || true
echo "rate $RATE msgs/s: $(grep -m1 'send_to_delivered' "$WORK/loadgen.txt" || true)"
python3 "$root/benchmarks/stalls_report.py" "$WORK/sched.txt" "$WORK/slow.txt" \
    "$WORK/ours.txt" "$BURST_MS"
echo "traces and loadgen's report: $WORK"
