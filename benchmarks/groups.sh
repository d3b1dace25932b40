#!/usr/bin/env bash
# Group fan-out figures, each against a fresh gateway (`loadgen group`,
# every online member device verified once and in order):
#   1. closed loop: NGROUPS groups of 256 members, all online, one sender
#      each with 32 unanswered sends, for 10 s: member deliveries per
#      second and send→last member;
#   2. one message to a 1,024-member group with half its members offline:
#      send→✓ and the time until the last online member has it.
# Each runs RUNS times; the lines are each run's, the median is yours.
#
#   benchmarks/groups.sh
#   RUNS=5 NGROUPS=8 benchmarks/groups.sh
#
# Knobs (environment): RUNS (3), NGROUPS (4), SHARDS (2), BIN (directory
# holding gateway and loadgen; default: build them), WORK (a directory for
# data, reports and logs; default: a fresh temporary one).
set -euo pipefail

RUNS=${RUNS:-3}
NGROUPS=${NGROUPS:-4}
SHARDS=${SHARDS:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z "${BIN:-}" ]]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p gateway -p loadgen
    BIN="$root/target/release"
fi
WORK=${WORK:-$(mktemp -d -t groups.XXXXXX)}
mkdir -p "$WORK"
. "$root/benchmarks/lib.sh"
gw=""
trap '[[ -n "$gw" ]] && kill -9 "$gw" 2>/dev/null || true' EXIT
ulimit -n 20000 2>/dev/null || true

# One loadgen group run on a fresh gateway; prints the named lines.
run() {
    local name=$1; shift
    data="$WORK/$name/data"
    rm -rf "$WORK/$name"
    mkdir -p "$WORK/$name"
    port=$(free_port)
    admin=$(free_port)
    start_gateway
    "$BIN/loadgen" --addr "127.0.0.1:$port" --data-dir "$data" --quiet \
        --out "$WORK/$name/report" --threads 2 group "$@" >"$WORK/$name/table.txt" 2>&1 || true
    kill "$gw"
    wait "$gw" 2>/dev/null || true
    gw=""
    grep -E '^  (delivered|send_to_ack|send_to_last_member|verification)' "$WORK/$name/table.txt" |
        sed "s/^/$name /"
}

for i in $(seq 1 "$RUNS"); do
    run "256-$i" --groups "$NGROUPS" --size 256 --senders 1 --window 32 --duration 10s
done
for i in $(seq 1 "$RUNS"); do
    run "1024-$i" --groups 1 --size 1024 --offline 512 --messages 1 --duration 10s
done
echo "reports under $WORK"
