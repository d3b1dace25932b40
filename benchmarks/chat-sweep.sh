#!/usr/bin/env bash
# The highest open-loop `chat` rate a running gateway holds with p99
# send→delivered under a target: runs `loadgen chat --rate R` for each rate
# in RATES (ascending) and prints one line per rate, stopping after the
# first rate over the target.
#
#   benchmarks/chat-sweep.sh                       # 1,000 connections
#   PAIRS=5000 RATES="1000 2000 4000" benchmarks/chat-sweep.sh
#
# Knobs (environment): PAIRS (500; two connections each), RATES
# ("2000 5000 10000 15000 20000"), TARGET_MS (10), DURATION (10s),
# LOADGEN (target/release/loadgen), OUT (sweep-report), and ARGS: extra
# global loadgen flags (default "--threads 2"; add --addr/--data-dir for a
# gateway elsewhere). Each run uses fresh user ids.
set -euo pipefail

PAIRS=${PAIRS:-500}
RATES=${RATES:-"2000 5000 10000 15000 20000"}
TARGET_MS=${TARGET_MS:-10}
DURATION=${DURATION:-10s}
root=$(cd "$(dirname "$0")/.." && pwd)
LOADGEN=${LOADGEN:-$root/target/release/loadgen}
OUT=${OUT:-sweep-report}
read -r -a args <<<"${ARGS:---threads 2}"

printf "%-10s %12s %10s %10s %10s  %s\n" "offered/s" "delivered/s" "p50 ms" "p99 ms" "p99.9 ms" "verdict"
base=$((($(date +%s) % 100000) * 100000))
for rate in $RATES; do
    dir="$OUT/rate-$rate"
    "$LOADGEN" "${args[@]}" --quiet --user-base "$base" --out "$dir" \
        chat --pairs "$PAIRS" --rate "$rate" --duration "$DURATION" >/dev/null || true
    base=$((base + 2 * PAIRS))
    line=$(python3 - "$dir/report.json" "$TARGET_MS" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
d = r["latency_us"].get("send_to_delivered", {"p50": 0, "p99": 0, "p999": 0})
rate = r["counters"].get("delivered", 0) / r["send_s"]
over = d["p99"] / 1000 > float(sys.argv[2])
verdict = "PASS" if r["verdict"]["ok"] else "FAIL " + ", ".join(r["verdict"]["failures"])
print(f'{rate:12.0f} {d["p50"]/1000:10.2f} {d["p99"]/1000:10.2f} {d["p999"]/1000:10.2f}  {verdict}{" (p99 over target)" if over else ""}')
EOF
)
    printf "%-10s %s\n" "$rate" "$line"
    [[ "$line" == *"over target"* ]] && break
done
