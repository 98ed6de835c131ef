"""Per-item cost of the worker's hand-back and sync point, and Redis commands per item, through real workers.

    python bench/handback.py                      # seed scenario, sync and balanced, 3 runs each
    python bench/handback.py --modes balanced --seconds 0 --repeat 5

Runs bench/schedule.py's scenario on one private cluster and, per run,
reads `INFO commandstats` before and after (every command Redis executed,
including those inside scripts), with --monitor counts the commands
clients sent (the producer's, the workers', Celery's; a script is one), and reads
the run's timeline (bench/timeline.py).
Prints, per mode, the median over runs of: hand-back median and mean,
report -> next start median, sync point per boundary (sync mode), and Redis
commands per item, with the commands that make them up.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from redis import Redis  # noqa: E402

import schedule  # noqa: E402
import timeline  # noqa: E402
from editbatch.cluster.local import LocalCluster  # noqa: E402
from editbatch.config import dump_config  # noqa: E402
from editbatch.producer.run import execute  # noqa: E402


def commandstats(redis: Redis) -> Counter:
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"])
                    for name, v in redis.info("commandstats").items()})


class Monitor:
    """Commands sent by clients (MONITOR, leaving out those a script runs), counted by name."""

    def __init__(self, redis: Redis):
        self.counts: Counter = Counter()
        self._monitor = redis.monitor()
        self._conn = self._monitor.__enter__()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                got = self._conn.next_command()
                if got.get("client_type") != "lua":
                    self.counts[got["command"].split(" ", 1)[0].lower()] += 1
        except Exception:  # noqa: BLE001 - closed at the end of the run
            return

    def stop(self) -> Counter:
        with contextlib.suppress(Exception):
            self._monitor.connection.disconnect()
        self._thread.join(5)
        return self.counts


def one_run(redis: Redis, config, monitor: bool) -> dict:
    before = commandstats(redis)
    watch = Monitor(redis) if monitor else None
    with open(os.devnull, "w") as quiet:
        execute(config, source="bench", stream=quiet)
    sent = watch.stop() if watch else Counter()
    calls = commandstats(redis) - before
    calls.pop("info", None)
    calls.pop("monitor", None)
    m = timeline.measure(Path(config.output_dir))
    items = len(m["ran"]) or 1
    med = statistics.median
    return {"hand_back_median": med(m["hand_back"]), "hand_back_mean": statistics.mean(m["hand_back"]),
            "next_start_median": med(m["gaps"]) if m["gaps"] else None,
            "sync_point_mean": statistics.mean(m["sync_point"]) if m["sync_point"] else None,
            "sync_point_median": med(m["sync_point"]) if m["sync_point"] else None,
            "makespan": m["summary"]["makespan_s"], "per_item": sum(calls.values()) / items,
            "sent_per_item": sum(sent.values()) / items, "sent": {k: v / items for k, v in sent.most_common()},
            "by_command": {k: v / items for k, v in calls.most_common()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=270)
    p.add_argument("--devices", type=int, default=6)
    p.add_argument("--seconds", type=float, default=0.2)
    p.add_argument("--jitter", type=float, default=0.1)
    p.add_argument("--modes", default="sync,balanced")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--monitor", action="store_true",
                   help="also count the commands clients send (MONITOR: slows Redis, so timings read higher)")
    args = p.parse_args(argv)
    sched = schedule.parse_args(["--items", str(args.items), "--devices", str(args.devices),
                                 "--seconds", str(args.seconds), "--jitter", str(args.jitter)])
    speeds = schedule.speeds_for(sched)
    modes = args.modes.split(",")
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="editbatch-handback-")))
        cfg = schedule.make_config(root, sched, speeds, "auto", modes[0], "workers")
        (root / "workers.yaml").write_text(dump_config(cfg))
        cluster = stack.enter_context(LocalCluster(root / "workers.yaml", cfg.devices, root / "logs"))
        broker = cluster.start()
        redis = Redis.from_url(broker)
        print(f"{args.items} items of {args.seconds} s on {args.devices} devices, {args.repeat} runs per mode, "
              f"{os.cpu_count()} CPU cores")
        for mode in modes:
            runs = [one_run(redis, schedule.make_config(root, sched, speeds, broker, mode, f"{mode}-{rep}"),
                            args.monitor)
                    for rep in range(args.repeat)]

            def med(key: str, scale: float = 1000.0, runs: list[dict] = runs) -> str:
                values = [r[key] for r in runs if r[key] is not None]
                return f"{scale * statistics.median(values):.2f}" if values else "-"

            print(f"{mode}: hand-back median {med('hand_back_median')} ms, mean {med('hand_back_mean')} ms; "
                  f"report->next start {med('next_start_median')} ms; sync point per boundary mean "
                  f"{med('sync_point_mean')} ms, median {med('sync_point_median')} ms; "
                  f"makespan {med('makespan', 1)} s; Redis commands per item {med('per_item', 1)} executed, "
                  f"{med('sent_per_item', 1)} sent by clients")
            for label, name in (("executed", "by_command"), ("sent", "sent")):
                total = Counter()
                for r in runs:
                    total.update(r[name])
                print(f"  {label} per item: " + ", ".join(f"{k} {v / len(runs):.2f}" for k, v in total.most_common(16)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
