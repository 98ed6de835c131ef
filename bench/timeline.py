"""Where a run's time went, from its manifest: queue wait, task, hand-back, and the gap to the next task.

    python bench/timeline.py runs/demo [--items 12]

Per task, on the worker's clock: submitted_at (producer) -> started_at ->
finished_at (model call) -> reported_at (output written, claim, barrier and
result sent) -> the same device's next started_at. The gap from reported_at
to the next start is Celery's share: the return, the late ack, fetching and
dispatching the next message (negative when the next item was held and
started before this one's hand-back ended: prefetch 2). `device idle` is
finished_at to the same device's next started_at: the device's gap between
two edits. In sync mode, `sync point` is the last finish
of batch k to the first start of batch k+1, per boundary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {1000 * statistics.median(values):6.2f} ms, mean {1000 * statistics.mean(values):6.2f} ms"


def measure(run: Path) -> dict:
    """The run's summary, its tasks by device (in start order), and the per-task phases in seconds."""
    records = [json.loads(line) for line in (run / "manifest.jsonl").open() if line.strip()]
    summary = json.loads((run / "summary.json").read_text())
    ran = [r for r in records if r.get("started_at") and r.get("reported_at")]
    by_device: dict[str, list[dict]] = {}
    for r in ran:
        by_device.setdefault(r["device"], []).append(r)
    hand_back, gaps, idle = [], [], []
    for rows in by_device.values():
        rows.sort(key=lambda r: r["started_at"])
        hand_back += [r["reported_at"] - r["finished_at"] for r in rows]
        gaps += [b["started_at"] - a["reported_at"] for a, b in zip(rows, rows[1:])]
        idle += [b["started_at"] - a["finished_at"] for a, b in zip(rows, rows[1:])]
    ends: dict[int, float] = {}
    starts: dict[int, float] = {}
    for r in ran:
        if r.get("batch") is not None:
            ends[r["batch"]] = max(ends.get(r["batch"], r["finished_at"]), r["finished_at"])
            starts[r["batch"]] = min(starts.get(r["batch"], r["started_at"]), r["started_at"])
    sync = [max(0.0, starts[k + 1] - ends[k]) for k in sorted(ends) if k + 1 in starts]
    return {"summary": summary, "ran": ran, "by_device": by_device, "hand_back": hand_back, "gaps": gaps, "idle": idle,
            "sync_point": sync if summary.get("mode") == "sync" else []}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--items", type=int, default=0, help="also print the first N tasks' timeline")
    args = p.parse_args(argv)
    m = measure(args.run)
    summary, ran, by_device = m["summary"], m["ran"], m["by_device"]
    t0 = summary["started_at"]
    print(f"{args.run}: mode {summary['mode']}, {len(ran)} tasks on {len(by_device)} devices, "
          f"makespan {summary['makespan_s']:.3f} s, ideal {summary['ideal_s']} s, overhead {summary['overhead']}")
    print(f"  first task starts after   {min(r['started_at'] for r in ran) - t0:8.3f} s")
    print(f"  queue wait (submit->start) {ms([r['started_at'] - r['submitted_at'] for r in ran])}")
    print(f"  task (start->finish)       {ms([r['finished_at'] - r['started_at'] for r in ran])}")
    print(f"  hand-back (finish->report) {ms(m['hand_back'])}")
    print(f"  next start (report->start) {ms(m['gaps'])}  (includes barrier waits in sync mode)")
    print(f"  device idle (finish->start) {ms(m['idle'])}")
    if m["sync_point"]:
        print(f"  sync point (per boundary)  {ms(m['sync_point'])}")
    ends = sorted(max(r["finished_at"] for r in rows) - t0 for rows in by_device.values())
    print(f"  devices finish at          {', '.join(f'{e:.2f}' for e in ends)} s")
    for r in sorted(ran, key=lambda r: r["started_at"])[: args.items]:
        print(f"    {r['id']:<16} {r['device']:<6} submit {r['submitted_at'] - t0:7.3f}  "
              f"start {r['started_at'] - t0:7.3f}"
              f"  end {r['finished_at'] - t0:7.3f}  reported {r['reported_at'] - t0:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
