#!/usr/bin/env bash
# Where the machine runs out (issue #17): for each open-loop rate of a
# ladder, a fresh gateway and `loadgen chat --rate R` (500 pairs, WARMUP s
# of warm-up, then SECS s measured), and per rate one line: send→delivered
# p50/p99 (ms), the gateway's and loadgen's CPU seconds (utime + stime,
# warm-up included), how busy both cores were (/proc/stat: user,
# system, irq and softirq) and how much time the hypervisor gave to
# someone else (steal). When the cores are near 90% busy, latency is
# queueing for a core, not work; steal says the sitting was a noisy one.
#
#   benchmarks/saturation.sh                    # 2k 5k 10k 20k 40k
#   RATES="10000 20000" SECS=10 benchmarks/saturation.sh
#
# Knobs (environment): RATES, PAIRS (500), SECS (10), WARMUP (5), SHARDS
# (2), BIN (target/release). Bounded: one run per rate, SECS + WARMUP s.
set -euo pipefail

RATES=${RATES:-2000 5000 10000 20000 40000}
PAIRS=${PAIRS:-500}
SECS=${SECS:-10}
WARMUP=${WARMUP:-5}
SHARDS=${SHARDS:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(cd "${BIN:-$root/target/release}" && pwd)
. "$root/benchmarks/lib.sh"

cleanup() { [[ -n "${gw:-}" ]] && kill -9 "$gw" 2>/dev/null || true; }
trap cleanup EXIT
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

printf '%8s %9s %9s %8s %8s %6s %6s\n' msgs/s p50_ms p99_ms gw_cpu_s lg_cpu_s busy% steal%
for rate in $RATES; do
    WORK=$(mktemp -d)
    port=$(free_port) admin=$(free_port) data="$WORK/data"
    mkdir -p "$data"
    start_gateway
    stat0=$(head -1 /proc/stat) gw0=$(ticks "$gw")
    # (python3 runs loadgen to read its CPU time from the child's rusage.)
    python3 -c 'import resource, subprocess, sys; subprocess.run(sys.argv[2:]);
u = resource.getrusage(resource.RUSAGE_CHILDREN); open(sys.argv[1], "w").write(f"{u.ru_utime} {u.ru_stime}")' \
        "$WORK/loadgen.cpu" "$BIN/loadgen" --threads 2 --quiet \
        --out "$WORK/out" chat --addr "127.0.0.1:$port" --data-dir "$data" --pairs "$PAIRS" \
        --duration "${SECS}s" --warmup "${WARMUP}s" --rate "$rate" >/dev/null || true
    stat1=$(head -1 /proc/stat) gw1=$(ticks "$gw")
    kill -9 "$gw" 2>/dev/null || true
    wait "$gw" 2>/dev/null || true
    python3 - "$rate" "$WORK/out/report.json" "$((gw1 - gw0))" "$WORK/loadgen.cpu" \
        "$stat0" "$stat1" <<'EOF'
import json, sys
rate, report, gw_ticks, lg_cpu, s0, s1 = sys.argv[1:]
lat = json.load(open(report))["latency_us"]["send_to_delivered"]
lg = sum(map(float, open(lg_cpu).read().split()[:2]))
d = [int(b) - int(a) for a, b in zip(s0.split()[1:9], s1.split()[1:9])]
busy = 100 * (sum(d) - d[3] - d[4] - d[7]) / sum(d)  # all but idle, iowait, steal
steal = 100 * d[7] / sum(d)  # the hypervisor ran someone else
print(f"{rate:>8} {lat['p50'] / 1e3:9.2f} {lat['p99'] / 1e3:9.2f} "
      f"{int(gw_ticks) / 100:8.2f} {lg:8.2f} {busy:6.1f} {steal:6.1f}")
EOF
    rm -rf "$WORK"
done
