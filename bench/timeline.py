"""Where a run's time went, from its manifest: queue wait, task, hand-back, and the gap to the next task.

    python bench/timeline.py runs/demo [--items 12]

Per task, on the worker's clock: submitted_at (producer) -> started_at ->
finished_at (model call) -> reported_at (output written, result pushed) ->
the same device's next started_at. The gap from reported_at to the next
start is Celery's share: the return, the late ack, fetching and dispatching
the next message.
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--items", type=int, default=0, help="also print the first N tasks' timeline")
    args = p.parse_args(argv)
    records = [json.loads(line) for line in (args.run / "manifest.jsonl").open() if line.strip()]
    summary = json.loads((args.run / "summary.json").read_text())
    ran = [r for r in records if r.get("started_at") and r.get("reported_at")]
    t0 = summary["started_at"]
    by_device: dict[str, list[dict]] = {}
    for r in ran:
        by_device.setdefault(r["device"], []).append(r)
    hand_back, gaps = [], []
    for rows in by_device.values():
        rows.sort(key=lambda r: r["started_at"])
        hand_back += [r["reported_at"] - r["finished_at"] for r in rows]
        gaps += [b["started_at"] - a["reported_at"] for a, b in zip(rows, rows[1:])]
    print(f"{args.run}: mode {summary['mode']}, {len(ran)} tasks on {len(by_device)} devices, "
          f"makespan {summary['makespan_s']:.3f} s, ideal {summary['ideal_s']} s, overhead {summary['overhead']}")
    print(f"  first task starts after   {min(r['started_at'] for r in ran) - t0:8.3f} s")
    print(f"  queue wait (submit->start) {ms([r['started_at'] - r['submitted_at'] for r in ran])}")
    print(f"  task (start->finish)       {ms([r['finished_at'] - r['started_at'] for r in ran])}")
    print(f"  hand-back (finish->report) {ms(hand_back)}")
    print(f"  next start (report->start) {ms(gaps)}  (includes barrier waits in sync mode)")
    ends = sorted(max(r["finished_at"] for r in rows) - t0 for rows in by_device.values())
    print(f"  devices finish at          {', '.join(f'{e:.2f}' for e in ends)} s")
    for r in sorted(ran, key=lambda r: r["started_at"])[: args.items]:
        print(f"    {r['id']:<16} {r['device']:<6} submit {r['submitted_at'] - t0:7.3f}  "
              f"start {r['started_at'] - t0:7.3f}"
              f"  end {r['finished_at'] - t0:7.3f}  reported {r['reported_at'] - t0:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
