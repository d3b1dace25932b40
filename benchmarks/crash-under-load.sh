#!/usr/bin/env bash
# Crash under load: runs `loadgen chat` with verification while the gateway
# is killed with SIGKILL and restarted on the same data directory every few
# seconds. Clients reconnect, resend unanswered sends with their ids and
# resume their queues; the verdict is loadgen's: zero ✓'d messages lost,
# zero duplicated, zero reordered. Exit status 0 only if it holds and the
# gateway was restarted the requested number of times.
#
#   benchmarks/crash-under-load.sh                  # 20 restarts, 2 s apart
#   RESTARTS=50 EVERY=3 PAIRS=500 RATE=50000 benchmarks/crash-under-load.sh
#
# Knobs (environment): RESTARTS (20), EVERY seconds between kills (2),
# PAIRS (200), RATE total msgs/s, open loop (20000; empty = closed loop),
# SHARDS (2), BIN (directory holding gateway and loadgen; default: build
# them with `cargo build --release`), WORK (a directory for data, logs and
# the report; default: a fresh temporary one), LIMIT seconds for the whole
# run (RESTARTS × EVERY + 120), GATEWAY_ARGS (more `gateway serve` flags,
# split on spaces: "--segment-bytes 1048576").
set -euo pipefail

RESTARTS=${RESTARTS:-20}
EVERY=${EVERY:-2}
PAIRS=${PAIRS:-200}
RATE=${RATE-20000}
SHARDS=${SHARDS:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z "${BIN:-}" ]]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p gateway -p loadgen
    BIN="$root/target/release"
fi
WORK=${WORK:-$(mktemp -d -t crash-under-load.XXXXXX)}
LIMIT=${LIMIT:-$((RESTARTS * EVERY + 120))}
mkdir -p "$WORK"
data="$WORK/data"

. "$root/benchmarks/lib.sh"
port=$(free_port)
admin=$(free_port)

gw=""
loadgen=""
cleanup() {
    [[ -n "$loadgen" ]] && kill "$loadgen" 2>/dev/null || true
    [[ -n "$gw" ]] && kill -9 "$gw" 2>/dev/null || true
}
trap cleanup EXIT

# Starts the gateway and waits (bounded) for its `ready` line.
start_gateway() {
    : >"$WORK/gateway.out"
    RUST_LOG=${RUST_LOG:-warn} "$BIN/gateway" serve --shards "$SHARDS" \
        --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
        --data-dir "$data" --sends-per-s 1000000 --send-bytes-per-s 1000000000 \
        $NO_ABUSE_LIMITS ${GATEWAY_ARGS:-} \
        >"$WORK/gateway.out" 2>>"$WORK/gateway.err" &
    gw=$!
    for _ in $(seq 1 600); do
        grep -q '^ready' "$WORK/gateway.out" && return 0
        kill -0 "$gw" 2>/dev/null || { echo "gateway exited; see $WORK/gateway.err" >&2; return 1; }
        sleep 0.1
    done
    [[ -n "${ON_HANG:-}" ]] && $ON_HANG "$gw"
    echo "gateway not ready within 60 s; its last lines:" >&2
    tail -5 "$WORK/gateway.err" >&2
    return 1
}

start_gateway
duration=$((RESTARTS * (EVERY + 2) + EVERY))  # restarts take time too
rate_args=()
[[ -n "$RATE" ]] && rate_args=(--rate "$RATE")
timeout "$LIMIT" "$BIN/loadgen" --addr "127.0.0.1:$port" --data-dir "$data" \
    --out "$WORK/report" --quiet --threads 2 \
    chat --pairs "$PAIRS" --duration "${duration}s" --drain 30s --window 64 "${rate_args[@]}" \
    >"$WORK/loadgen.out" 2>"$WORK/loadgen.err" &
loadgen=$!

restarts=0
for _ in $(seq 1 "$RESTARTS"); do
    sleep "$EVERY"
    kill -0 "$loadgen" 2>/dev/null || break
    if ! kill -0 "$gw" 2>/dev/null; then
        gw_status=0
        wait "$gw" || gw_status=$?
        gw=""
        echo "crash-under-load: the gateway exited on its own (status $gw_status) after $restarts restarts; its last lines:" >&2
        tail -20 "$WORK/gateway.err" >&2
        exit 1
    fi
    kill -9 "$gw"
    wait "$gw" 2>/dev/null || true
    start_gateway
    restarts=$((restarts + 1))
done

status=0
wait "$loadgen" || status=$?
loadgen=""
cat "$WORK/loadgen.out"
echo "crash-under-load: $restarts SIGKILL restarts of the gateway; loadgen exit $status; files in $WORK"
if [[ $status -ne 0 ]]; then
    tail -20 "$WORK/loadgen.err" >&2
    exit 1
fi
if [[ $restarts -lt $RESTARTS ]]; then
    echo "crash-under-load: loadgen ended before $RESTARTS restarts" >&2
    exit 1
fi
echo "crash-under-load: PASS"
