# Shell helpers the benchmark scripts source (`. "$root/benchmarks/lib.sh"`).

# A TCP port on 127.0.0.1 that was free a moment ago.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The sum over shards of metric $2 on the admin address $1 (0 if absent).
metric_sum() {
    curl -s --max-time 5 "http://$1/metrics" |
        awk -v k="$2" '$1 ~ "^"k"({|$)" {s += $2} END {printf "%d", s}'
}

# Seconds from the `date +%s.%N` stamp $1 until now, to 0.01 s.
seconds_since() {
    python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(date +%s.%N)"
}
