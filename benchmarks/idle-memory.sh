#!/usr/bin/env bash
# What an idle authenticated TLS connection costs the whole gateway
# process (issue #17): starts a gateway, opens CONNS connections that
# authenticate and then stay silent (`loadgen idle`, from PROCS processes
# and two loopback source addresses, since one process may hold 20,000
# files here), and prints the gateway's resident memory per connection
# (RSS after minus before, from /proc). The counting-allocator figure for
# the core and TLS alone is `gateway/tests/conn_memory.rs`.
#
#   benchmarks/idle-memory.sh                 # 19,000 connections, 2 shards
#   CONNS=9000 benchmarks/idle-memory.sh
#
# The figure is read SETTLE after all are open, once the gateway has let
# the quiet connections' TLS keys sleep (`tls_keys_idle_ms`, 10 s, to twice
# it); `gateway_bytes_per_conn_at_2s` is the same while they are awake.
#
# Runs of one build differ by up to 10% (how 19,000 handshakes interleave
# in the allocator's pages): RUNS=5 runs five fresh gateways and prints the
# median.
#
# Knobs (environment): CONNS (19000), PROCS (2), SHARDS (2), SETTLE (22s),
# HOLD (25s), RUNS (1), BIN (target/release), OUT (a fresh temporary
# directory: run-N/report.json per run, with `gateway_bytes_per_conn`
# under `extra`), GATEWAY_ARGS (more `gateway serve` flags, split on
# spaces).
set -euo pipefail

CONNS=${CONNS:-19000}
PROCS=${PROCS:-2}
SHARDS=${SHARDS:-2}
SETTLE=${SETTLE:-22s}
RUNS=${RUNS:-1}
HOLD=${HOLD:-25s}
root=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(cd "${BIN:-$root/target/release}" && pwd)
WORK=$(mktemp -d)
OUT=${OUT:-$WORK/report}
. "$root/benchmarks/lib.sh"

# One run on a fresh gateway: $1 is its report directory.
one_run() {
    port=$(free_port)
    admin=$(free_port)
    data="$WORK/data-$1"
    # shellcheck disable=SC2086 # GATEWAY_ARGS is split on purpose
    start_gateway ${GATEWAY_ARGS:-}
    "$BIN/loadgen" idle --addr "127.0.0.1:$port" --conns "$CONNS" --procs "$PROCS" \
        --source 127.0.0.2,127.0.0.3 --data-dir "$data" --gateway-pid "$gw" \
        --settle "$SETTLE" --hold "$HOLD" --out "$OUT/$1" --quiet | grep -E "gateway_|verification"
    kill "$gw" 2>/dev/null || true
    wait "$gw" 2>/dev/null || true
    echo "report: $OUT/$1/report.json"
}

trap 'kill "$gw" 2>/dev/null || true; wait "$gw" 2>/dev/null || true' EXIT
for run in $(seq 1 "$RUNS"); do
    [[ "$RUNS" -gt 1 ]] && echo "run $run of $RUNS"
    one_run "run-$run"
done
if [[ "$RUNS" -gt 1 ]]; then
    python3 - "$OUT" "$RUNS" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
per = [json.load(open(f"{out}/run-{i}/report.json"))["extra"]["gateway_bytes_per_conn"]
       for i in range(1, runs + 1)]
print("gateway_bytes_per_conn over %d runs: median %.0f (%s)"
      % (runs, statistics.median(per), ", ".join("%.0f" % p for p in per)))
PY
fi
