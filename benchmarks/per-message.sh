#!/usr/bin/env bash
# What one message costs the gateway under an open-loop load (issue #17's
# "where a message's time goes"): starts a gateway, runs
# `loadgen chat --rate RATE`, and over a WINDOW in the middle of the run
# counts, per message stored, the frames in and out, group-commit batches,
# shards woken by another's mesh doorbell,
# io_uring_enter, send and recv syscalls, context switches and CPU-µs (the gateway's
# utime + stime; loadgen's too) and the TCP segments sent on the machine (the gateway's
# and loadgen's, on loopback: each one a pass through both ends' TCP
# stack; and per side, those with data and those without: pure ACKs),
# then records a `perf` profile of the same load and prints its
# split between kernel and user space and its top user symbols.
#
#   benchmarks/per-message.sh                     # 10,000 msgs/s, 500 pairs
#   RATE=2000 WINDOW=5 benchmarks/per-message.sh
#
# Knobs (environment): RATE (10000), PAIRS (500), WINDOW (10 s), SHARDS
# (2), BIN (target/release), WORK (a fresh temporary directory), PERF
# (1; 0 skips the profile). Needs `perf` with tracepoints (root).
set -euo pipefail

RATE=${RATE:-10000}
PAIRS=${PAIRS:-500}
WINDOW=${WINDOW:-10}
SHARDS=${SHARDS:-2}
PERF=${PERF:-1}
root=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(cd "${BIN:-$root/target/release}" && pwd)
WORK=${WORK:-$(mktemp -d)}
. "$root/benchmarks/lib.sh"

start_one_gateway

# The load runs for the warm-up, the counted window and the profile.
duration=$((3 + WINDOW + WINDOW + 3))
(cd "$WORK" && exec "$BIN/loadgen" --threads 2 --quiet chat --addr "127.0.0.1:$port" \
    --data-dir "$data" --pairs "$PAIRS" --rate "$RATE" --duration "${duration}s" \
    >"$WORK/loadgen.txt" 2>&1) &
load=$!
sleep 3

sum() { metric_sum "127.0.0.1:$admin" "$1"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/${1:-$gw}/stat"; }
stored0=$(sum gateway_messages_stored_total)
in0=$(sum gateway_frames_in_total)
out0=$(sum gateway_frames_out_total)
batches0=$(sum gateway_fdatasync_seconds_count)
bells0=$(sum gateway_mesh_doorbells_total)
cpu0=$(cpu_ticks)
load_cpu0=$(cpu_ticks "$load")
segs0=$(tcp_out)
tcp_segments_by_socket "$port" >"$WORK/sockets0.txt"
perf stat -x, -e context-switches,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom -p "$gw" \
    -- sleep "$WINDOW" 2>"$WORK/perf-stat.csv"
stored=$(($(sum gateway_messages_stored_total) - stored0))
frames_in=$(($(sum gateway_frames_in_total) - in0))
frames_out=$(($(sum gateway_frames_out_total) - out0))
batches=$(($(sum gateway_fdatasync_seconds_count) - batches0))
bells=$(($(sum gateway_mesh_doorbells_total) - bells0))
cpu=$(($(cpu_ticks) - cpu0))
load_cpu=$(($(cpu_ticks "$load") - load_cpu0))
segs=$(($(tcp_out) - segs0))
tcp_segments_by_socket "$port" >"$WORK/sockets1.txt"
switches=$(awk -F, '$3 == "context-switches" {print $1}' "$WORK/perf-stat.csv")
enters=$(awk -F, '$3 ~ /io_uring_enter/ {print $1}' "$WORK/perf-stat.csv")
sends=$(awk -F, '$3 ~ /sys_enter_sendto/ {print $1}' "$WORK/perf-stat.csv")
recvs=$(awk -F, '$3 ~ /sys_enter_recvfrom/ {print $1}' "$WORK/perf-stat.csv")

python3 - "$stored" "$frames_in" "$frames_out" "$batches" "$cpu" "${switches:-0}" "${enters:-0}" \
    "${sends:-0}" "${recvs:-0}" "$WINDOW" "$RATE" "$segs" "$bells" "$load_cpu" "$port" \
    "$WORK/sockets0.txt" "$WORK/sockets1.txt" <<'EOF'
import sys
stored, fin, fout, batches, ticks, switches, enters, sends, recvs = map(int, sys.argv[1:10])
window, rate = float(sys.argv[10]), sys.argv[11]
segs, bells, load_ticks = int(sys.argv[12]), int(sys.argv[13]), int(sys.argv[14])
port, before, after = sys.argv[15], sys.argv[16], sys.argv[17]
if stored == 0:
    sys.exit("no message was stored in the window: see loadgen.txt")
n = stored
print(f"offered {rate} msgs/s; {stored} messages stored in {window:.0f} s")
print(f"per message: {fin / n:.2f} frames in, {fout / n:.2f} frames out, "
      f"{batches / n:.2f} group-commit batches, {bells / n:.2f} shard wake-ups by the mesh, "
      f"{enters / n:.2f} io_uring_enter, "
      f"{sends / n:.2f} send, {recvs / n:.2f} recv, "
      f"{switches / n:.2f} context switches, {ticks * 10_000 / n:.1f} CPU-µs; "
      f"{segs / n:.2f} TCP segments (both ends, loopback)")

def sockets(path):
    found = {}
    for line in open(path):
        local, peer, out, data = line.split()
        found[(local, peer)] = (int(out), int(data))
    return found

sent = {"gateway": [0, 0], "loadgen": [0, 0]}
first = sockets(before)
for key, (out, data) in sockets(after).items():
    if key in first:
        side = sent["gateway" if key[0].endswith(":" + port) else "loadgen"]
        side[0] += data - first[key][1]
        side[1] += (out - data) - (first[key][0] - first[key][1])
print(f"loadgen: {load_ticks * 10_000 / n:.1f} CPU-µs per message; segments sent per message "
      + ", ".join(f"by {who} {d / n:.2f} with data and {a / n:.2f} without"
                  for who, (d, a) in sent.items()))
EOF

if [[ "$PERF" == 1 ]]; then
    perf record -F 999 -g -p "$gw" -o "$WORK/perf.data" -- sleep "$WINDOW" >/dev/null 2>&1
    echo "profile ($WORK/perf.data), by object:"
    perf report -i "$WORK/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
        grep '%' | head -5
    echo "top symbols of the gateway itself:"
    perf report -i "$WORK/perf.data" --no-children --sort sym --stdio -g none \
        --dsos gateway 2>/dev/null | grep '%' | head -15
fi
wait "$load" || true
grep -E "send_to_delivered|verification" "$WORK/loadgen.txt" || true
