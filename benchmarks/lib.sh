# Shell helpers the benchmark scripts source (`. "$root/benchmarks/lib.sh"`).

# A TCP port on 127.0.0.1 that was free a moment ago.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The admin endpoint's bearer token for the gateways these scripts start.
ADMIN_TOKEN=${ADMIN_TOKEN:-benchmark-admin-token}
# Flags that turn the per-device abuse limits off (load tests send far
# more to one recipient than a person would).
NO_ABUSE_LIMITS="--abuse-new-conversations-per-h 0 --abuse-messages-per-recipient-per-s 0 --abuse-group-creates-per-day 0"

# GET $1 (a path) on the admin address $2 with the bearer token.
admin_get() { curl -s --max-time 5 -H "Authorization: Bearer $ADMIN_TOKEN" "http://$2$1"; }

# The sum over shards of metric $2 on the admin address $1 (0 if absent).
metric_sum() {
    admin_get /metrics "$1" |
        awk -v k="$2" '$1 ~ "^"k"({|$)" {s += $2} END {printf "%d", s}'
}

# TCP segments sent on this machine so far (`OutSegs`, /proc/net/snmp).
tcp_out() { awk '$1 == "Tcp:" { if (!n) { for (i = 1; i <= NF; i++) if ($i == "OutSegs") n = i } else print $n }' /proc/net/snmp; }

# Per established TCP connection to or from port $1 on this machine, one
# line: local address, peer address, segments sent, data segments sent
# (`ss -ti`). A segment sent that carries no data is a pure ACK (or a
# window update).
tcp_segments_by_socket() {
    ss -tinH state established "( sport = :$1 or dport = :$1 )" |
        awk 'NR % 2 == 1 {local = $3; peer = $4; next}
             {out = 0; data = 0
              for (i = 1; i <= NF; i++) {
                  if ($i ~ /^segs_out:/) { split($i, a, ":"); out = a[2] }
                  if ($i ~ /^data_segs_out:/) { split($i, a, ":"); data = a[2] }
              }
              print local, peer, out, data}'
}

# Seconds from the `date +%s.%N` stamp $1 until now, to 0.01 s.
seconds_since() {
    python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(date +%s.%N)"
}

# Starts `$BIN/gateway serve` for a benchmark (no rate limits) with the
# caller's $SHARDS, $port, $admin, $data and $WORK, plus the flags given;
# sets `gw` to its pid and `took` to the seconds until its `ready` line.
# Fails if it exits first or is not ready within 300 s.
start_gateway() {
    : >"$WORK/gateway.out"
    local t0
    t0=$(date +%s.%N)
    RUST_LOG=${RUST_LOG:-warn} "$BIN/gateway" serve --shards "$SHARDS" \
        --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
        --data-dir "$data" --sends-per-s 1000000 --send-bytes-per-s 1000000000 \
        --admin-token "$ADMIN_TOKEN" $NO_ABUSE_LIMITS \
        "$@" >"$WORK/gateway.out" 2>>"$WORK/gateway.err" &
    gw=$!
    for _ in $(seq 1 30000); do
        if grep -q '^ready' "$WORK/gateway.out"; then
            took=$(seconds_since "$t0")
            return 0
        fi
        kill -0 "$gw" 2>/dev/null || { echo "gateway exited; see $WORK/gateway.err" >&2; return 1; }
        sleep 0.01
    done
    echo "gateway not ready within 300 s" >&2
    return 1
}

# For a script that runs one gateway: takes free ports ($port, $admin),
# puts the log in $WORK/data, starts `$BIN/gateway` with the flags given
# (see start_gateway), and on exit kills it and deletes the log (with its
# two spare segments it holds 128 MiB or more; the reports in $WORK stay).
start_one_gateway() {
    port=$(free_port)
    admin=$(free_port)
    data="$WORK/data"
    mkdir -p "$data"
    trap stop_one_gateway EXIT
    start_gateway "$@"
}

stop_one_gateway() {
    if [[ -n "${gw:-}" ]]; then
        kill -9 "$gw" 2>/dev/null
        wait "$gw" 2>/dev/null || true
    fi
    rm -rf "$data"
}
