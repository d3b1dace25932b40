#!/usr/bin/env bash
# Restart time with a large live state: fills DEVICES offline queues with
# MESSAGES each (`loadgen offline`, stopped before its reconnect storm
# drains them; a fill too quick to catch is stopped as the storm begins, and
# the line says how many were queued), SIGKILLs the gateway, and times
# three starts on that data
# directory: from the checkpoint the gateway wrote, from the whole log (the
# checkpoint files moved aside), and from the checkpoint again.
#
#   benchmarks/restart.sh                      # 2,000 devices x 1,000
#   DEVICES=500 MESSAGES=4000 benchmarks/restart.sh
#
# Knobs (environment): DEVICES (2000), MESSAGES (1000), SHARDS (2), BIN
# (directory holding gateway and loadgen; default: build them), WORK (a
# directory for data and logs; default: a fresh temporary one).
set -euo pipefail

DEVICES=${DEVICES:-2000}
MESSAGES=${MESSAGES:-1000}
SHARDS=${SHARDS:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z "${BIN:-}" ]]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p gateway -p loadgen
    BIN="$root/target/release"
fi
WORK=${WORK:-$(mktemp -d -t restart.XXXXXX)}
mkdir -p "$WORK"
data="$WORK/data"

. "$root/benchmarks/lib.sh"
port=$(free_port)
admin=$(free_port)
gw=""
loadgen=""
cleanup() {
    [[ -n "$loadgen" ]] && kill -9 "$loadgen" 2>/dev/null || true
    [[ -n "$gw" ]] && kill -9 "$gw" 2>/dev/null || true
}
trap cleanup EXIT

metric() { metric_sum "127.0.0.1:$admin" "$1"; }

# How the last start went, from its metrics.
how() {
    echo "$(metric gateway_recovery_records) records replayed, $(metric gateway_recovery_from_checkpoint) of $SHARDS shards from a checkpoint"
}

kill_gateway() {
    kill -9 "$gw"
    wait "$gw" 2>/dev/null || true
    gw=""
}

start_gateway
target=$((DEVICES * MESSAGES * 95 / 100))
"$BIN/loadgen" --addr "127.0.0.1:$port" --data-dir "$data" --out "$WORK/fill" --quiet \
    --threads 2 offline --devices "$DEVICES" --messages "$MESSAGES" \
    >"$WORK/loadgen.out" 2>"$WORK/loadgen.err" &
loadgen=$!
# Until the queues hold 95 % of it, or the storm has begun draining them.
prev=0
for _ in $(seq 1 3000); do
    now=$(metric gateway_queued_messages)
    [[ $now -ge $target || $now -lt $prev ]] && break
    kill -0 "$loadgen" 2>/dev/null || break
    prev=$now
    sleep 0.05
done
queued=$(metric gateway_queued_messages)
kill -9 "$loadgen" 2>/dev/null || true
wait "$loadgen" 2>/dev/null || true
loadgen=""
sleep 1 # a checkpoint for the last segment may be on its way
live=$(metric gateway_live_bytes)
kill_gateway
bytes=$(du -sb "$data" | cut -f1)
echo "filled: $queued messages queued, live $((live >> 20)) MiB, data/ $((bytes >> 20)) MiB"

start_gateway
echo "restart from the checkpoint: $took s ($(how))"
kill_gateway
mkdir -p "$WORK/aside"
for f in "$data"/shard-*/checkpoint; do
    [[ -e "$f" ]] && mv "$f" "$WORK/aside/$(basename "$(dirname "$f")").checkpoint"
done
start_gateway
echo "restart replaying the whole log: $took s ($(how))"
sleep 2 # it writes a checkpoint of what it replayed
kill_gateway
start_gateway
echo "restart from the checkpoint it wrote since: $took s ($(how))"
kill_gateway
echo "files in $WORK"
