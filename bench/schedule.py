"""What each scheduling mode costs, measured through real workers and a real Redis.

Runs the simulated model (it only sleeps) on one private cluster for every
mode and prints one table. The default scenario is the seed's: 270 items on
6 devices, two of them 5% slower, +-10% per-item jitter, at 0.2 s per item
(a tenth of the seed's 2 s, so the whole benchmark takes about a minute).

    python bench/schedule.py
    python bench/schedule.py --items 540 --speeds 1,1,1,1.5 --jitter 0.3 --modes sync,balanced

Columns: makespan (first submit to last finish); lower bound (total work /
sum of device speeds, or the longest task); efficiency (lower bound /
makespan); ideal (the same mode replayed with the recorded task times and
zero orchestration cost); overhead (makespan / ideal - 1); barrier idle
(device-seconds spent waiting for the slowest task of a batch); sync pt (sum
over batch boundaries of last finish -> next batch's first start: what the
sync point itself costs); max skew (in
batches, oldest unfinished item to newest started one); queue wait (median
submit-to-start).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

from PIL import Image  # noqa: E402

from editbatch.cluster.local import LocalCluster  # noqa: E402
from editbatch.config import dump_config, validate_config  # noqa: E402
from editbatch.producer.run import execute  # noqa: E402

SEED_SPEEDS = "1.0,1.05,1.0,1.0,1.05,1.0"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=270)
    p.add_argument("--devices", type=int, default=6)
    p.add_argument("--speeds", default=None, help=f"per-device time factors (default {SEED_SPEEDS} for 6 devices)")
    p.add_argument("--jitter", type=float, default=0.1)
    p.add_argument("--seconds", type=float, default=0.2)
    p.add_argument("--modes", default="sync,nosync,balanced,window")
    p.add_argument("--max-skew", type=int, default=1)
    p.add_argument("--prefetch", type=int, default=2, help="tasks each worker holds (cluster.prefetch)")
    p.add_argument("--no-take-back", dest="take_back", action="store_false",
                   help="leave a prefetched task with its holder at the end of a run (schedule.take_back: false)")
    p.add_argument("--barrier", default="worker", choices=["worker", "producer"], help="sync mode's barrier")
    p.add_argument("--no-events", dest="events", action="store_false",
                   help="cluster.task_events: false (no Celery task events for Flower)")
    p.add_argument("--repeat", type=int, default=1, help="runs per mode (the table shows the median makespan run)")
    p.add_argument("--json", type=Path, help="also write the summaries here")
    p.add_argument("--keep", type=Path, help="keep run folders here (manifests for timelines)")
    return p.parse_args(argv)


def speeds_for(args) -> list[float]:
    if args.speeds:
        speeds = [float(s) for s in args.speeds.split(",")]
    elif args.devices == 6:
        speeds = [float(s) for s in SEED_SPEEDS.split(",")]
    else:
        speeds = [1.0] * args.devices
    if len(speeds) != args.devices:
        sys.exit(f"--speeds has {len(speeds)} values for {args.devices} devices")
    return speeds


def make_config(root: Path, args, speeds, broker: str, mode: str, tag: str):
    image = root / "input.png"
    if not image.exists():
        Image.new("RGB", (16, 16), (10, 20, 30)).save(image)
    dataset = root / "dataset.jsonl"
    if not dataset.exists():
        dataset.write_text("".join(json.dumps({"id": f"item-{i:06d}", "image": "input.png", "instruction": "edit"})
                                   + "\n" for i in range(args.items)))
    data = {
        "name": f"bench-{mode}", "dataset": {"path": str(dataset)}, "output_dir": str(root / f"run-{tag}"),
        "model": {"type": "simulated", "path": "bench",
                  "params": {"seconds": args.seconds, "jitter": args.jitter, "device_speed": speeds}},
        "cluster": {"broker": broker, "devices": ["cpu"] * args.devices, "prefetch": args.prefetch,
                    "task_events": args.events,
                    "output_roots": [str(root)], "input_roots": [str(root)]},  # one worker set, many run folders
        "schedule": {"mode": mode, "max_skew": args.max_skew, "barrier": args.barrier, "take_back": args.take_back},
    }
    return validate_config(data, "bench")


def row(s: dict) -> str:
    idle = f"{s['barrier_idle_s']:.2f}" if s["barrier_idle_s"] is not None else "-"
    release = f"{s['barrier_release_s']:.3f}" if s["barrier_release_s"] is not None else "-"
    wait = f"{s['median_queue_wait_s']:.3f}" if s["median_queue_wait_s"] is not None else "-"
    mode = s["mode"] + (f" K={s['max_skew']}" if s["mode"] == "window" else "")
    return (f"| {mode:<10} | {s['makespan_s']:8.2f} | {s['lower_bound_s']:8.2f} | {s['efficiency']:5.3f} | "
            f"{s['ideal_s']:6.2f} | {100 * s['overhead']:+6.2f}% | {idle:>12} | {release:>9} | "
            f"{s['max_skew_observed']:4.2f} | {wait:>7} |")


HEADER = ("| mode       | makespan | lower bd | effic | ideal  | overhead | barrier idle | sync pt s | skew "
          "| q wait  |\n"
          "|------------|---------:|---------:|------:|-------:|---------:|-------------:|----------:|-----:|--------:|")


def main(argv=None) -> int:
    args = parse_args(argv)
    speeds = speeds_for(args)
    modes = args.modes.split(",")
    with contextlib.ExitStack() as stack:
        root = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="editbatch-bench-")))
        root.mkdir(parents=True, exist_ok=True)
        cfg = make_config(root, args, speeds, "auto", modes[0], "workers")
        (root / "workers.yaml").write_text(dump_config(cfg))
        cluster = stack.enter_context(LocalCluster(root / "workers.yaml", cfg.devices, root / "logs"))
        broker = cluster.start()
        print(f"scenario: {args.items} items, {args.devices} devices, speed factors {speeds}, "
              f"jitter +-{args.jitter:.0%}, {args.seconds} s per item; prefetch {args.prefetch}"
              f"{'' if args.take_back else ' (no take-back)'}, "
              f"sync barrier on the {args.barrier}; task events {'on' if args.events else 'off'}; "
              f"{os.cpu_count()} CPU cores", flush=True)
        summaries = []
        with open(os.devnull, "w") as quiet:
            for mode in modes:
                runs = []
                for rep in range(args.repeat):
                    config = make_config(root, args, speeds, broker, mode, f"{mode}-{rep}")
                    runs.append(execute(config, source="bench", stream=quiet).summary)
                runs.sort(key=lambda s: s["makespan_s"])
                summaries.append(runs[len(runs) // 2])
                print(f"  {mode}: {summaries[-1]['makespan_s']:.2f}s", file=sys.stderr, flush=True)
        print(HEADER)
        for s in summaries:
            print(row(s))
        if args.json:
            args.json.write_text(json.dumps(summaries, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
