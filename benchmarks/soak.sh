#!/usr/bin/env bash
# Soak: does the gateway hold a steady state? Runs a closed-loop `chat`
# (the most it takes), then an open-loop one at half that rate, against one
# gateway on one data directory, sampling the gateway every 10 s; then
# SIGKILLs it and times the restart to `ready`.
#
#   benchmarks/soak.sh                    # 30 minutes: 15 closed, 15 open
#   SOAK_S=300 benchmarks/soak.sh         # 5 minutes
#
# Knobs (environment): SOAK_S (1800; split evenly between the phases),
# PAIRS (200; two connections each), WINDOW (64 unanswered sends per sender),
# SHARDS (2), SEGMENT_BYTES (the log's segment size, 67108864), EXTRA
# (more `gateway serve` flags, e.g. "--queue-messages-max 1000"),
# BIN (directory holding gateway and loadgen; default: build them with
# `cargo build --release`), WORK (a directory for data, logs and results;
# default: a fresh temporary one).
#
# Writes to WORK: samples.csv (every 10 s: RSS, data/ bytes, live bytes the
# log needs, queued messages, delivered and refused so far), series.csv (per
# second: delivered and the p99 of send→delivered, from loadgen's reports),
# soak.svg (both, plotted), summary.txt (the figures the steady-state issue
# asks for) and each phase's loadgen report.
set -euo pipefail

SOAK_S=${SOAK_S:-1800}
PAIRS=${PAIRS:-200}
WINDOW=${WINDOW:-64}
SHARDS=${SHARDS:-2}
SEGMENT_BYTES=${SEGMENT_BYTES:-67108864}
read -r -a extra <<<"${EXTRA:-}"
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z "${BIN:-}" ]]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p gateway -p loadgen
    BIN="$root/target/release"
fi
WORK=${WORK:-$(mktemp -d -t soak.XXXXXX)}
mkdir -p "$WORK"
data="$WORK/data"
phase_s=$((SOAK_S / 2))

. "$root/benchmarks/lib.sh"
port=$(free_port)
admin=$(free_port)

gw=""
sampler=""
cleanup() {
    [[ -n "$sampler" ]] && kill "$sampler" 2>/dev/null || true
    [[ -n "$gw" ]] && kill -9 "$gw" 2>/dev/null || true
}
trap cleanup EXIT

# One line of samples.csv: the gateway's RSS and disk, and a few metrics
# summed over its shards.
sample() {
    local t rss bytes m
    t=$(date +%s)
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$gw/status" 2>/dev/null || echo 0)
    bytes=$(du -sb "$data" | cut -f1)
    m=$(admin_get /metrics "127.0.0.1:$admin" || true)
    sum() { awk -v k="$1" '$1 ~ "^"k"({|$)" {s += $2} END {printf "%d", s}' <<<"$m"; }
    echo "$t,$1,$rss,$bytes,$(sum gateway_live_bytes),$(sum gateway_queued_messages),$(sum gateway_messages_delivered_total),$(sum gateway_errors_total)"
}

sample_every_10s() {
    while true; do
        sample "$1" >>"$WORK/samples.csv"
        sleep 10
    done
}

# Runs one phase of `chat`; $1 its name, the rest loadgen chat flags.
phase() {
    local name=$1
    shift
    sample_every_10s "$name" &
    sampler=$!
    "$BIN/loadgen" --addr "127.0.0.1:$port" --data-dir "$data" --out "$WORK/$name" \
        --quiet --threads 2 --user-base "$base" \
        chat --pairs "$PAIRS" --duration "${phase_s}s" --window "$WINDOW" "$@" \
        >"$WORK/$name.out" 2>"$WORK/$name.err" || echo "loadgen $name: exit $? (see $WORK/$name.err)" >&2
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    sampler=""
    base=$((base + 2 * PAIRS))
}

echo "t,phase,rss_kib,data_bytes,live_bytes,queued,delivered,errors" >"$WORK/samples.csv"
start_gateway --segment-bytes "$SEGMENT_BYTES" "${extra[@]}"
base=$((($(date +%s) % 100000) * 100000))
echo "soak: closed loop for ${phase_s}s ($PAIRS pairs, window $WINDOW); files in $WORK"
phase closed
rate=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(int(r["counters"].get("delivered",0) / r["send_s"] / 2))' "$WORK/closed/report.json")
echo "soak: open loop at $rate msgs/s for ${phase_s}s"
phase open --rate "$rate"
sample end >>"$WORK/samples.csv"
admin_get /metrics "127.0.0.1:$admin" >"$WORK/metrics-end.txt" || true
kill -9 "$gw"
wait "$gw" 2>/dev/null || true
start_gateway --segment-bytes "$SEGMENT_BYTES" "${extra[@]}"
sleep 1
sample restarted >>"$WORK/samples.csv"
echo "restart_s=$took" >"$WORK/restart.txt"
SHARDS=$SHARDS SEGMENT_BYTES=$SEGMENT_BYTES python3 "$root/benchmarks/soak_report.py" "$WORK" | tee "$WORK/summary.txt"
