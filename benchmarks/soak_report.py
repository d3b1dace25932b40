#!/usr/bin/env python3
"""The figures of a `soak.sh` run: reads its WORK directory, writes
series.csv and soak.svg there and prints the summary.

Usage: soak_report.py WORK
"""
import csv
import json
import os
import re
import statistics
import sys

# The log's segment size and the shard count (each shard has its own log).
SEGMENT_BYTES = int(os.environ.get("SEGMENT_BYTES", 64 << 20))
SHARDS = int(os.environ.get("SHARDS", 2))


def load_samples(work):
    with open(os.path.join(work, "samples.csv")) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in r:
            if k != "phase":
                r[k] = int(r[k] or 0)
    return rows


def load_series(work):
    """Per-second (unix_s, phase, delivered, p99 ms) from both phases."""
    out = []
    for phase in ("closed", "open"):
        path = os.path.join(work, phase, "report.json")
        if not os.path.exists(path):
            continue
        for s in json.load(open(path))["series"]:
            lat = s.get("latency_us") or {}
            out.append((s["unix_s"], phase, s["counts"].get("delivered", 0), lat.get("p99", 0) / 1000))
    return sorted(out)


def minute(series, phase, which):
    """Median delivered/s and median per-second p99 over the first or last
    full minute of a phase (its first and last 5 s left out: ramp, drain)."""
    rows = [r for r in series if r[1] == phase]
    if len(rows) < 20:
        return None
    rows = rows[5:-5]
    part = rows[:60] if which == "first" else rows[-60:]
    return statistics.median(r[2] for r in part), statistics.median(r[3] for r in part)


def refusals(work):
    path = os.path.join(work, "metrics-end.txt")
    codes = {}
    if os.path.exists(path):
        for line in open(path):
            m = re.match(r'gateway_errors_total\{.*code="(\d+)".*\} (\d+)', line)
            if m:
                codes[m[1]] = codes.get(m[1], 0) + int(m[2])
    return codes


def svg(samples, series, path):
    """Four stacked panels: RSS, data/ and live bytes, queued, and the
    per-second delivered rate with its p99."""
    w, h, pad = 900, 170, 50
    t0 = min([s["t"] for s in samples] + [r[0] for r in series])
    t1 = max([s["t"] for s in samples] + [r[0] for r in series] + [t0 + 1])
    panels = [
        ("RSS (MiB)", [([(s["t"], s["rss_kib"] / 1024) for s in samples], "#1f77b4")]),
        ("data/ and live bytes (MiB)", [
            ([(s["t"], s["data_bytes"] / 2**20) for s in samples], "#d62728"),
            ([(s["t"], s["live_bytes"] / 2**20) for s in samples], "#2ca02c")]),
        ("queued messages", [([(s["t"], s["queued"]) for s in samples], "#9467bd")]),
        ("delivered/s (blue), p99 ms ×100 (orange)", [
            ([(r[0], r[2]) for r in series], "#1f77b4"),
            ([(r[0], r[3] * 100) for r in series], "#ff7f0e")]),
    ]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h * len(panels)}" font-family="sans-serif" font-size="12">']
    for i, (title, lines) in enumerate(panels):
        y0 = i * h
        top = max([v for pts, _ in lines for _, v in pts] + [1])
        out.append(f'<text x="{pad}" y="{y0 + 15}">{title}, max {top:,.0f}</text>')
        out.append(f'<rect x="{pad}" y="{y0 + 20}" width="{w - 2 * pad}" height="{h - 40}" fill="none" stroke="#999"/>')
        for pts, colour in lines:
            coords = " ".join(
                f"{pad + (t - t0) / (t1 - t0) * (w - 2 * pad):.1f},{y0 + h - 20 - v / top * (h - 40):.1f}"
                for t, v in pts)
            out.append(f'<polyline fill="none" stroke="{colour}" points="{coords}"/>')
    out.append(f'<text x="{pad}" y="{h * len(panels) - 4}">{(t1 - t0) / 60:.1f} minutes</text></svg>')
    open(path, "w").write("\n".join(out))


def main():
    work = sys.argv[1]
    samples = load_samples(work)
    series = load_series(work)
    with open(os.path.join(work, "series.csv"), "w") as f:
        f.write("unix_s,phase,delivered,p99_ms\n")
        for r in series:
            f.write(f"{r[0]},{r[1]},{r[2]},{r[3]}\n")
    svg([s for s in samples if s["phase"] in ("closed", "open")], series, os.path.join(work, "soak.svg"))

    run = [s for s in samples if s["phase"] in ("closed", "open", "end")]
    start, end = run[0]["t"], run[-1]["t"]
    at = start + (end - start) / 6  # minute 5 of 30
    early = next(s for s in run if s["t"] >= at)
    last = run[-1]
    growth = (last["rss_kib"] - early["rss_kib"]) / max(early["rss_kib"], 1) * 100
    print(f"RSS: {early['rss_kib'] / 1024:.0f} MiB at {(early['t'] - start) / 60:.1f} min, "
          f"{last['rss_kib'] / 1024:.0f} MiB at {(last['t'] - start) / 60:.1f} min: {growth:+.1f} %")
    live = last["live_bytes"]
    bound = 2 * live + 2 * SEGMENT_BYTES * SHARDS
    print(f"data/: {last['data_bytes'] / 2**20:.0f} MiB; live {live / 2**20:.0f} MiB; "
          f"bound 2 x live + 2 segments per shard = {bound / 2**20:.0f} MiB: "
          f"{'within' if last['data_bytes'] <= bound else 'OVER'}")
    print(f"queued at the end: {last['queued']}")
    peak = max(run, key=lambda s: s["data_bytes"])
    print(f"data/ at its largest: {peak['data_bytes'] / 2**20:.0f} MiB at {(peak['t'] - start) / 60:.1f} min "
          f"(live then {peak['live_bytes'] / 2**20:.0f} MiB)")
    for phase in ("closed", "open"):
        a, b = minute(series, phase, "first"), minute(series, phase, "last")
        if a and b:
            print(f"{phase}: delivered/s {a[0]:.0f} first minute, {b[0]:.0f} last ({(b[0] - a[0]) / max(a[0], 1) * 100:+.1f} %); "
                  f"p99 {a[1]:.1f} ms first, {b[1]:.1f} ms last")
        path = os.path.join(work, phase, "report.json")
        if os.path.exists(path):
            r = json.load(open(path))
            c = r["counters"]
            print(f"{phase}: sent {c.get('sent', 0)}, acked {c.get('acked', 0)}, delivered {c.get('delivered', 0)}, "
                  f"refused {c.get('refused', 0)}, ✓✓ missing {c.get('receipts_missing', 0)}, verdict {'PASS' if r['verdict']['ok'] else r['verdict']['failures']}")
    print(f"refusals by code: {refusals(work) or 'none'}")
    restarted = [s for s in samples if s["phase"] == "restarted"]
    restart = open(os.path.join(work, "restart.txt")).read().strip() if os.path.exists(os.path.join(work, "restart.txt")) else "?"
    rss_after = f", RSS after {restarted[0]['rss_kib'] / 1024:.0f} MiB" if restarted else ""
    print(f"restart after SIGKILL: {restart.split('=')[-1]} s to ready{rss_after}")


if __name__ == "__main__":
    main()
