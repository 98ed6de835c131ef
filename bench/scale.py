"""Scale check: many zero-second items through real workers, nothing lost, memory bounded.

    python bench/scale.py                       # 100,000 items, nosync and balanced, 4 workers
    python bench/scale.py --items 20000 --modes balanced

For each mode the producer runs as its own process (`editbatch run`), so its
peak RSS is its own; Redis memory is sampled every 0.1 s while it runs.
Prints items/s, producer peak RSS, Redis peak memory, and whether every item
appears exactly once in the manifest with status ok; then the producer's peak
RSS in each step of its end, from /proc samples every 50 ms placed between the
last result, the manifest rewrite, summary.json and the `Report:` line; then
the CPU time per item of the workers, the producer and Redis.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image
from redis import Redis

from editbatch.cluster.local import LocalCluster
from editbatch.config import dump_config, validate_config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--devices", type=int, default=4)
    p.add_argument("--modes", default="nosync,balanced")
    p.add_argument("--prefetch", type=int, default=1)
    p.add_argument("--no-events", action="store_true", help="cluster.task_events: false (no Flower task events)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="editbatch-scale-") as tmp:
        root = Path(tmp)
        Image.new("RGB", (8, 8)).save(root / "in.png")
        with (root / "dataset.jsonl").open("w") as fh:
            for i in range(args.items):
                fh.write(json.dumps({"id": f"i{i:07d}", "image": "in.png", "instruction": "x"}) + "\n")

        def config(mode: str, broker: str):
            return validate_config({
                "name": f"scale-{mode}", "dataset": {"path": str(root / "dataset.jsonl")},
                "output_dir": str(root / f"run-{mode}"),
                "model": {"type": "simulated", "path": "scale", "params": {"seconds": 0.0, "size": 1}},
                "cluster": {"broker": broker, "devices": ["cpu"] * args.devices, "prefetch": args.prefetch,
                            "task_events": not args.no_events,
                            "output_roots": [str(root)], "input_roots": [str(root)]},
                "schedule": {"mode": mode, "task_timeout_s": 120},
            }, "scale")

        first = config("nosync", "auto")
        (root / "workers.yaml").write_text(dump_config(first))
        with LocalCluster(root / "workers.yaml", first.devices, root / "logs") as cluster:
            broker = cluster.start()
            redis = Redis.from_url(broker)
            print(f"{args.items} items of 0 s on {args.devices} workers, prefetch {args.prefetch}, task events "
                  f"{'off' if args.no_events else 'on'}, {os.cpu_count()} CPU cores", flush=True)
            print("| mode     | items/s | wall s | producer peak RSS | Redis peak memory | all once, ok |")
            print("|----------|--------:|-------:|------------------:|------------------:|:------------:|")
            steps, cpu = [], []
            others = {"workers": [p.pid for p in cluster.workers.values()],
                      "Redis": [cluster.redis.process.pid] if cluster.redis else []}
            for mode in args.modes.split(","):
                cfg_path = root / f"{mode}.yaml"
                cfg_path.write_text(dump_config(config(mode, broker)))
                peak = {"redis": 0}
                stop = threading.Event()
                start = time.monotonic()
                before = {name: cpu_s(pids) for name, pids in others.items()}
                proc = subprocess.Popen([sys.executable, "-m", "editbatch", "run", str(cfg_path)],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                        env={**os.environ, "TQDM_DISABLE": "1"})
                manifest = root / f"run-{mode}" / "manifest.jsonl"
                trace = RssTrace(proc.pid, manifest)

                def sample(stop=stop, peak=peak, trace=trace):
                    while not stop.wait(0.05):
                        trace.sample()
                        peak["redis"] = max(peak["redis"], int(redis.info("memory")["used_memory"]))

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                for line in proc.stdout:  # the producer's lines, timed: where its end steps begin and end
                    trace.line(line)
                _, status, usage = os.wait4(proc.pid, 0)
                wall = time.monotonic() - start
                spent = {name: cpu_s(pids) - before[name] for name, pids in others.items()}
                spent["producer"] = usage.ru_utime + usage.ru_stime
                cpu.append((mode, {k: 1000 * v / args.items for k, v in spent.items()}))
                stop.set()
                sampler.join()
                steps.append((mode, trace.steps(manifest)))
                ids, ok = set(), 0
                lines = 0
                with manifest.open() as fh:
                    for line in fh:
                        r = json.loads(line)
                        ids.add(r["id"])
                        ok += r["status"] == "ok"
                        lines += 1
                whole = lines == args.items == len(ids) == ok
                summary = json.loads((root / f"run-{mode}" / "summary.json").read_text())
                rate = args.items / summary["makespan_s"]
                print(f"| {mode:<8} | {rate:7.0f} | {wall:6.1f} | {trace.peak_mb:14.0f} MB | "
                      f"{peak['redis'] / 2**20:14.1f} MB | "
                      f"{'yes' if whole and os.waitstatus_to_exitcode(status) == 0 else 'NO'} |",
                      flush=True)
                print(f"<!-- {mode} producer peak RSS per step: "
                      + ", ".join(f"{k} {mb(v)}" for k, v in steps[-1][1].items()) + " -->", flush=True)
            print("\nproducer peak RSS per step (MB):")
            print("| mode     | dispatch | manifest rewrite | summary | report | whole command |")
            print("|----------|---------:|-----------------:|--------:|-------:|--------------:|")
            names = ("dispatch", "manifest rewrite", "summary", "report", "whole")
            for mode, s in steps:
                print(f"| {mode:<8} | " + " | ".join(mb(s.get(k), unit=False) for k in names) + " |")
            # CPU time per item (user + system, the producer's whole command): steadier than items/s on a shared
            # machine, and it says where to cut.
            print("\nCPU ms per item:")
            print("| mode     | workers | producer | Redis | total |")
            print("|----------|--------:|---------:|------:|------:|")
            for mode, c in cpu:
                print(f"| {mode:<8} | {c['workers']:7.2f} | {c['producer']:8.2f} | {c['Redis']:5.2f} | "
                      f"{sum(c.values()):5.2f} |")
    return 0


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of the whole line)
    return total / ticks


def mb(value: float | None, unit: bool = True) -> str:
    """A step too short for any 50 ms sample to fall in it (small runs) reads "-", not 0."""
    return "-" if value is None else f"{value:.0f}" + (" MB" if unit else "")


class RssTrace:
    """The producer's RSS every 50 ms, with the moments its end steps are seen to finish."""

    def __init__(self, pid: int, manifest: Path):
        self.pid, self.manifest = pid, manifest
        self.samples: list[tuple[float, float]] = []  # (time.time(), MB)
        self.marks: dict[str, float] = {}
        self.inode: int | None = None
        self.peak_mb = 0.0

    def sample(self) -> None:
        try:
            with open(f"/proc/{self.pid}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh)
        except OSError:
            return
        if "VmRSS" not in fields:
            return  # exiting
        rss = int(fields["VmRSS"].split()[0]) / 1024
        # The kernel's high-water mark, between samples too (ru_maxrss from wait4 can carry the
        # bench's own RSS from before the producer's exec).
        self.peak_mb = max(self.peak_mb, int(fields["VmHWM"].split()[0]) / 1024)
        now = time.time()
        self.samples.append((now, rss))
        try:
            inode = self.manifest.stat().st_ino
        except OSError:
            return
        if self.inode is not None and inode != self.inode:
            self.marks.setdefault("manifest rewrite", now)  # rewritten in place of the appended file
        self.inode = inode
        if (self.manifest.parent / "summary.json").exists():
            self.marks.setdefault("summary", now)

    def line(self, text: str) -> None:
        if text.startswith("Batch edit completed"):
            self.marks.setdefault("summary", time.time())
        elif text.startswith(("Report:", "Report not written")):
            self.marks["report"] = time.time()

    def steps(self, manifest: Path) -> dict[str, float | None]:
        """Peak MB in each step: until the last result was reported, then until each mark."""
        last = 0.0
        with manifest.open() as fh:
            for line in fh:
                last = max(last, json.loads(line).get("reported_at") or 0.0)
        bounds = [("dispatch", last + 0.5)] + sorted(self.marks.items(), key=lambda kv: kv[1])
        out, begin = {}, 0.0
        for name, end in bounds:
            out[name] = max((r for t, r in self.samples if begin <= t <= end), default=None)
            begin = end
        out["whole"] = max((r for _, r in self.samples), default=None)
        return out


if __name__ == "__main__":
    sys.exit(main())
