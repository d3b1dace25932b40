#!/usr/bin/env bash
# Instructions per operation on the hot paths of a message (issue #17):
# decode, route, append, deliver, ack, each run N times by the `hot-paths`
# binary under callgrind with only its `measure_*` functions counted, so
# setup is left out. Instruction counts do not move with the load of a
# shared machine as wall time does: compare two commits with these.
#
#   benchmarks/instructions.sh                 # N = 20000 each
#   N=100000 benchmarks/instructions.sh
#
# Needs valgrind. Prints one line per path: total Ir / N.
set -euo pipefail

N=${N:-20000}
root=$(cd "$(dirname "$0")/.." && pwd)
command -v valgrind >/dev/null || { echo "instructions.sh needs valgrind" >&2; exit 2; }
cargo build --release -q --manifest-path "$root/Cargo.toml" -p benchmarks --bin hot-paths
bin=$root/target/release/hot-paths
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
printf '%-8s %14s\n' path "Ir per op"
for path in decode route append deliver ack; do
    valgrind --tool=callgrind --toggle-collect='*measure_*' \
        --callgrind-out-file="$out/$path.out" "$bin" "$path" "$N" 2>"$out/$path.log"
    total=$(awk '/^(summary|totals):/ {print $2; exit}' "$out/$path.out")
    awk -v p="$path" -v t="$total" -v n="$N" 'BEGIN {printf "%-8s %14.0f\n", p, t / n}'
done
