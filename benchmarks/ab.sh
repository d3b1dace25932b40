#!/usr/bin/env bash
# Two builds side by side, interleaved (A, B, A, B, ...), each run on a
# fresh gateway: how issue #17's changes were judged on a machine whose
# speed drifts from one sitting to the next. Closed loop by default (1,000
# pairs, WINDOW (32) in flight per sender); with RATE, open loop (500
# pairs).
#
#   A=/tmp/before B=target/release benchmarks/ab.sh
#   A=/tmp/before B=target/release RATE=10000 RUNS=2 benchmarks/ab.sh
#   A=target/release B=target/release DATA_BASE=/dev/shm RATE=10000 benchmarks/ab.sh
#   A=target/release B=target/release WINDOW=64 RUNS=1 benchmarks/ab.sh
#   A=target/release B=target/release A_ARGS="--pin-shards on" \
#     B_ARGS="--pin-shards off" RATE=5000 benchmarks/ab.sh
#
# A and B are directories holding a `gateway` and a `loadgen`; LOADGEN (a
# directory) drives both with one loadgen instead, to compare gateways
# alone. DATA_BASE puts B's data directory under it (`/dev/shm`: a log on
# memory, to see what the disk adds); A's stays on the disk. A_ARGS and
# B_ARGS are added to each side's gateway command line (to compare
# settings of one build). Prints one
# line per run: build, delivered msgs/s, the gateway's CPU-µs per message
# measured (utime + stime over the whole run, connects and warm-up
# included, as `benchmarks/peers` counts it), the log writes (each an
# `O_DSYNC` write: `gateway_fdatasync_seconds_count`, connects and warm-up
# included) per delivered message, a log write's mean time from its
# start to the flusher seeing it done (`gateway_fdatasync_seconds`: the
# disk's time plus the wait for the shard to get to it), and in open loop
# p50 / p99 / p99.9 send→delivered ms.
#
# Knobs: RUNS (3 each), SECS (15; 5 s of warm-up come first), RATE
# (closed loop if unset), WINDOW (32: sends in flight per sender, closed
# loop), SHARDS (2).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
SECS=${SECS:-15}
SHARDS=${SHARDS:-2}
. "$root/benchmarks/lib.sh"

one() { # $1: label, $2: build directory, $3: base of the data directory, $4: gateway flags
    BIN=$(cd "$2" && pwd)
    local drive=${LOADGEN:-$BIN}
    WORK=$(mktemp -d ${3:+-p "$3"})
    port=$(free_port) admin=$(free_port) data=$WORK/data
    mkdir -p "$data"
    # shellcheck disable=SC2086 # flags, split on purpose
    start_gateway $4
    local before how=(--pairs 1000 --window "${WINDOW:-32}")
    before=$(awk '{print $14 + $15}' "/proc/$gw/stat")
    [[ -n "${RATE:-}" ]] && how=(--pairs 500 --rate "$RATE")
    "$drive/loadgen" --threads 2 --quiet --out "$WORK/run" chat --addr "127.0.0.1:$port" \
        --data-dir "$data" --duration "${SECS}s" --warmup 5s "${how[@]}" >/dev/null || true
    local ticks=$(($(awk '{print $14 + $15}' "/proc/$gw/stat") - before))
    local writes write_s
    writes=$(metric_sum "127.0.0.1:$admin" gateway_fdatasync_seconds_count)
    write_s=$(admin_get /metrics "127.0.0.1:$admin" |
        awk '$1 ~ /^gateway_fdatasync_seconds_sum/ {s += $2} END {printf "%.6f", s}')
    kill -9 "$gw" 2>/dev/null || true
    wait "$gw" 2>/dev/null || true
    python3 - "$1" "$WORK/run/report.json" "$ticks" "$(getconf CLK_TCK)" "${RATE:-}" "$writes" \
        "$write_s" <<'PY'
import json, sys
label, path, ticks, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
open_loop, writes = sys.argv[5] != "", int(sys.argv[6] or 0)
write_ms = float(sys.argv[7] or 0) * 1e3 / max(writes, 1)
r = json.load(open(path))
delivered = r["counters"]["delivered"]
line = f"{label}  {delivered / r['send_s']:>9,.0f} msgs/s  {ticks / hz * 1e6 / delivered:5.2f} CPU-µs/msg"
line += f"  {writes / delivered:6.4f} writes/msg of {write_ms:5.2f} ms"
lat = r["latency_us"].get("send_to_delivered")
if open_loop and lat and lat.get("count"):
    line += "  p50/p99/p99.9 {:.2f} / {:.2f} / {:.2f} ms".format(
        lat["p50"] / 1e3, lat["p99"] / 1e3, lat["p999"] / 1e3)
print(line, flush=True)
PY
    rm -rf "$WORK"
}

for _ in $(seq "$RUNS"); do
    one A "${A:?A: a build directory}" "" "${A_ARGS:-}"
    one B "${B:?B: a build directory}" "${DATA_BASE:-}" "${B_ARGS:-}"
done
