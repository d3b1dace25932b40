#!/usr/bin/env bash
# Starts under a busy machine: RUNS gateway starts on one data directory
# while two busy loops hold both cores; a start counts as hung if it prints
# no `ready` line within 15 s (then gdb's stacks go to WORK/hang-N.txt).
# Each gateway is killed with SIGKILL once ready.
#
#   benchmarks/busy-starts.sh               # 100 starts, release binary
#   RUNS=20 BIN=target/debug benchmarks/busy-starts.sh
set -euo pipefail
RUNS=${RUNS:-100}
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z "${BIN:-}" ]]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p gateway
    BIN="$root/target/release"
fi
WORK=${WORK:-$(mktemp -d -t busy-starts.XXXXXX)}
mkdir -p "$WORK"
. "$root/benchmarks/lib.sh"
busy=() gw=""
cleanup() {
    [[ -n "$gw" ]] && kill -9 "$gw" 2>/dev/null || true
    for p in "${busy[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
for _ in 1 2; do (while :; do :; done) & busy+=($!); done
hangs=0
for run in $(seq 1 "$RUNS"); do
    port=$(free_port); admin=$(free_port)
    : >"$WORK/out"
    RUST_LOG=warn "$BIN/gateway" serve --shards 2 --listen "127.0.0.1:$port" \
        --admin-listen "127.0.0.1:$admin" --data-dir "$WORK/data" \
        >"$WORK/out" 2>"$WORK/err" &
    gw=$!
    ready=0
    for _ in $(seq 1 150); do
        grep -q '^ready' "$WORK/out" && { ready=1; break; }
        sleep 0.1
    done
    if [[ $ready == 0 ]]; then
        hangs=$((hangs + 1))
        echo "start $run: no ready line in 15 s"
        command -v gdb >/dev/null && gdb -p "$gw" -batch -ex "thread apply all bt" >"$WORK/hang-$run.txt" 2>&1 || true
    fi
    kill -9 "$gw"; wait "$gw" 2>/dev/null || true; gw=""
done
echo "busy-starts: $RUNS starts with both cores busy, hung: $hangs"
