#!/usr/bin/env python3
"""What held the cores while messages were slow: the report of `stalls.sh`.

Usage: stalls_report.py SCHED_TXT SLOW_TSV OURS_TXT BURST_MS

SCHED_TXT is `perf script -F cpu,time,trace` of `sched:sched_switch` on
every CPU (monotonic clock), SLOW_TSV loadgen's slow-send rows
(send_mono_ns, answered_mono_ns, latency_us, answer), OURS_TXT the thread
ids of the gateway and loadgen (their io_uring workers, `iou-wrk-<tid>`,
count as theirs). A *foreign span* is a stretch of a CPU
given to tasks other than ours and the idle task, with neither ours nor
the idle task in between; a *burst* is one of BURST_MS or more. Prints the bursts by task,
then how many slow messages were in flight during one, and how many would
be by chance: the share of intervals of the same lengths, placed at random
in the window, that meet a burst.
"""
import bisect
import collections
import random
import re
import sys

SWITCH = re.compile(r"\[(\d+)\]\s+([\d.]+):.*==> next_comm=(.*?) next_pid=(\d+)")
IOU_WORKER = re.compile(r"iou-wrk-(\d+)$")


def is_ours(pid, comm, ours):
    """A thread of ours, or an io_uring worker one of ours started."""
    worker = IOU_WORKER.match(comm)
    return pid in ours or (worker is not None and int(worker.group(1)) in ours)


def foreign_spans(path, ours):
    """(start, end, {comm: seconds}) per foreign span, and the window."""
    running = {}  # cpu -> (pid, comm, since)
    open_span = {}  # cpu -> [start, end, Counter]
    spans, first, last = [], None, None
    for line in open(path):
        m = SWITCH.match(line)
        if not m:
            continue
        cpu, t = int(m.group(1)), float(m.group(2))
        first = t if first is None else first
        last = t
        if cpu in running:
            # What we saw switch in ran until now (if the trace lost the
            # switch out, until this one: the best guess at hand).
            pid, comm, since = running[cpu]
            if pid != 0 and not is_ours(pid, comm, ours):
                span = open_span.setdefault(cpu, [since, t, collections.Counter()])
                span[1] = t
                span[2][comm] += t - since
            elif cpu in open_span:  # ours or the idle task ran: it ends
                spans.append(tuple(open_span.pop(cpu)))
        running[cpu] = (int(m.group(4)), m.group(3), t)
    spans.extend(tuple(s) for s in open_span.values())
    return sorted(spans), (first or 0.0, last or 0.0)


def slow_rows(path, window):
    rows = []
    for line in open(path):
        parts = line.split()
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        start, end = int(parts[0]) / 1e9, int(parts[1]) / 1e9
        if window[0] <= start and end <= window[1]:
            rows.append((start, end))
    return rows


def meets(bursts, starts, a, b):
    """Whether [a, b] meets one of `bursts` (sorted by start)."""
    i = bisect.bisect_right(starts, b)
    return any(bursts[j][1] > a for j in range(i))


def main():
    sched, slow, ours_path, burst_ms = sys.argv[1:5]
    ours = {int(x) for x in open(ours_path).read().split()}
    spans, window = foreign_spans(sched, ours)
    bursts = [s for s in spans if s[1] - s[0] >= float(burst_ms) / 1e3]
    starts = [b[0] for b in bursts]
    length = window[1] - window[0]
    print(f"window {length:.1f} s; foreign bursts of {burst_ms} ms or more: "
          f"{len(bursts)}, {sum(b[1] - b[0] for b in bursts) * 1e3:.0f} ms in all, "
          f"longest {max((b[1] - b[0] for b in bursts), default=0) * 1e3:.1f} ms")
    by_task = collections.defaultdict(lambda: [0.0, 0])
    for _, _, comms in bursts:
        top = comms.most_common(1)[0][0]
        by_task[top][0] += sum(comms.values())
        by_task[top][1] += 1
    for task, (secs, n) in sorted(by_task.items(), key=lambda kv: -kv[1][0])[:8]:
        print(f"  {task}: {n} bursts, {secs * 1e3:.1f} ms")
    rows = slow_rows(slow, window)
    hit = sum(1 for a, b in rows if meets(bursts, starts, a, b))
    rng = random.Random(7)
    sample = rows if len(rows) <= 5000 else rng.sample(rows, 5000)
    chance = 0
    for a, b in sample:
        at = rng.uniform(window[0], window[1] - (b - a))
        chance += meets(bursts, starts, at, at + (b - a))
    share = hit / len(rows) * 100 if rows else 0.0
    by_chance = chance / len(sample) * 100 if sample else 0.0
    print(f"slow messages in the window: {len(rows)}; in flight during a burst: "
          f"{hit} ({share:.0f}%); by chance: {by_chance:.0f}%")


if __name__ == "__main__":
    main()
