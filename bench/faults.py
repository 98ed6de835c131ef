"""What a lost and a hung GPU cost each mode, with nothing lost and nothing computed twice.

The seed scenario (270 items on 6 simulated devices, 0.2 s per item, +-10%
jitter), each mode run twice with `broker: auto`: once without faults, once
with one worker killed (SIGKILL) when 30% of the items are done and another
stopped (SIGSTOP, a hung GPU) at 60%. The local cluster restarts the killed
worker and kills and restarts the stopped one; the producer reroutes their
items. Per mode it prints the makespan with and without faults, the items
whose edit was started twice (from the simulated model's call log: the ones
cut short on the killed and the stopped worker), the items retried, the
dispatch rounds, and the items lost (not ok at the end: must be 0).

    python bench/faults.py
    python bench/faults.py --items 540 --seconds 0.5 --modes sync,balanced
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=270)
    p.add_argument("--devices", type=int, default=6)
    p.add_argument("--seconds", type=float, default=0.2)
    p.add_argument("--jitter", type=float, default=0.1)
    p.add_argument("--modes", default="sync,nosync,balanced,window")
    p.add_argument("--kill-at", type=float, default=0.3, help="fraction of items done when a worker is killed")
    p.add_argument("--stop-at", type=float, default=0.6, help="fraction done when another is stopped (hung)")
    return p.parse_args(argv)


def write_config(root: Path, mode: str, args, name: str) -> tuple[Path, Path, Path]:
    image = root / "in.png"
    if not image.exists():
        Image.new("RGB", (16, 16), (90, 120, 150)).save(image)
    dataset = root / "dataset.jsonl"
    dataset.write_text("".join(json.dumps({"id": f"item-{i:04d}", "image": str(image), "instruction": "edit"}) + "\n"
                               for i in range(args.items)))
    out, calls = root / f"{name}-{mode}", root / f"{name}-{mode}.calls.jsonl"
    config = root / f"{name}-{mode}.yaml"
    config.write_text(json.dumps({
        "name": f"{name}-{mode}", "dataset": {"path": str(dataset)}, "output_dir": str(out),
        "model": {"type": "simulated", "path": "faults",
                  "params": {"seconds": args.seconds, "jitter": args.jitter, "call_log": str(calls)}},
        "cluster": {"broker": "auto", "devices": ["cpu"] * args.devices},
        "schedule": {"mode": mode, "task_timeout_s": 120}}))
    return config, out, calls


def done_count(calls: Path) -> int:
    try:
        return calls.read_text().count("\n")
    except OSError:
        return 0


def run(config: Path, out: Path, calls: Path, args, *, faults: bool) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "editbatch", "run", str(config)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if faults:
        plan = [(args.kill_at, "cpu1", signal.SIGKILL), (args.stop_at, "cpu4", signal.SIGSTOP)]
        for fraction, device, sig in plan:
            while proc.poll() is None and done_count(calls) < fraction * args.items:
                time.sleep(0.02)
            if proc.poll() is None:
                pid = json.loads((out / "logs" / "cluster.json").read_text())["workers"][device]
                os.kill(pid, sig)
    output, _ = proc.communicate(timeout=1800)
    summary = json.loads((out / "summary.json").read_text())
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    counted = Counter(json.loads(line)["id"] for line in calls.read_text().splitlines())
    return {"makespan": summary["makespan_s"], "ok": summary["ok"], "exit": proc.returncode,
            "twice": sum(1 for n in counted.values() if n > 1),
            "lost": sum(1 for r in manifest if r["status"] != "ok"),
            "retried": sum(1 for r in manifest if (r.get("attempts") or 1) > 1),
            "rounds": max((r.get("round") or 0) for r in manifest) + 1, "log": output}


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"{args.items} items of {args.seconds:g} s (+-{args.jitter:.0%}) on {args.devices} workers; "
          f"cpu1 killed at {args.kill_at:.0%}, cpu4 stopped at {args.stop_at:.0%}; {os.cpu_count()} CPU cores")
    print("| mode     | no faults s | with faults s | extra  | started twice | retried | rounds | lost |")
    print("|----------|------------:|--------------:|-------:|--------------:|--------:|-------:|-----:|")
    bad = 0
    with tempfile.TemporaryDirectory(prefix="editbatch-faults-") as tmp:
        root = Path(tmp)
        for mode in args.modes.split(","):
            clean = run(*write_config(root, mode, args, "clean"), args, faults=False)
            hurt = run(*write_config(root, mode, args, "faults"), args, faults=True)
            bad += hurt["lost"] + (hurt["exit"] != 0)
            extra = hurt["makespan"] / clean["makespan"] - 1
            print(f"| {mode:<8} | {clean['makespan']:11.2f} | {hurt['makespan']:13.2f} | {extra:+6.1%} | "
                  f"{hurt['twice']:13d} | {hurt['retried']:7d} | {hurt['rounds']:6d} | {hurt['lost']:4d} |",
                  flush=True)
            if hurt["exit"] != 0:
                print(hurt["log"][-3000:], file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
