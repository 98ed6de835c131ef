"""How long `editbatch report` takes on a large run: a synthetic 5,000-item run folder, built twice.

    python bench/report.py [--items 5000] [--devices 6] [--folder /tmp/editbatch-report-bench]

The folder holds what a real run writes (manifest.jsonl, summary.json,
workers.json, config.resolved.yaml, run.json, images/) with 512x512 inputs
(one per 10 items, as datasets reuse images) and 512x512 outputs. The first
build makes every thumbnail; the second reuses them, as a report rebuilt
after a run does.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import yaml
from PIL import Image

from editbatch.report import write_report

CATEGORIES = ("style", "color", "add", "remove", "background", "text")


def picture(size: int, seed: int) -> Image.Image:
    """A cheap image with some structure, so JPEG and PNG sizes are realistic rather than trivial."""
    rng = random.Random(seed)
    small = Image.new("RGB", (16, 16))
    small.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(256)])
    return small.resize((size, size), Image.BICUBIC)


def synthesise(folder: Path, items: int, devices: int, seconds: float = 2.0) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "images").mkdir(parents=True)
    (folder / "inputs").mkdir()
    queues = [f"gpu{d}" for d in range(devices)]
    rng = random.Random(0)
    for k in range(0, items, 10):
        picture(512, k).save(folder / "inputs" / f"in-{k // 10:05d}.jpg", quality=90)
    t0 = 1_700_000_000.0
    workers = [{"device": q, "queue": q, "host": "bench", "pid": 1000 + d, "worker": f"{q}@bench",
                "model": {"type": "qwen_image_edit", "path": "Qwen/Qwen-Image-Edit"},
                "load_started_at": t0 + 40 * d, "load_finished_at": t0 + 40 * d + 38,
                "ready_at": t0 + 40 * d + 38.5} for d, q in enumerate(queues)]
    start = t0 + 40 * devices
    free = {q: start for q in queues}
    records = []
    for i in range(items):
        batch = i // devices
        queue = queues[i % devices]
        if i % devices == 0:
            barrier = max(free.values())
            free = {q: barrier for q in queues}
        began = free[queue] + 0.01
        took = seconds * rng.uniform(0.8, 1.3)
        free[queue] = began + took
        status = "failed" if rng.random() < 0.01 else "ok"
        name = f"item-{i:05d}"
        if status == "ok":
            picture(512, 100_000 + i).save(folder / "images" / f"{name}.png", compress_level=1)
        records.append({"id": name, "index": i, "status": status, "output": f"images/{name}.png" if status == "ok"
                        else None, "device": queue, "worker": f"{queue}@bench", "batch": batch, "seed": i,
                        "submitted_at": start, "started_at": began, "finished_at": began + took,
                        "reported_at": began + took + 0.01, "error": "RuntimeError: CUDA out of memory"
                        if status == "failed" else None, "category": CATEGORIES[i % len(CATEGORIES)],
                        "instruction": f"edit number {i}: make it {CATEGORIES[i % 6]}",
                        "inputs": [str(folder / "inputs" / f"in-{i // 10:05d}.jpg")]})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    end = max(r["finished_at"] for r in records)
    ok = sum(r["status"] == "ok" for r in records)
    (folder / "summary.json").write_text(json.dumps({
        "mode": "sync", "items": items, "ok": ok, "failed": items - ok, "invalid": 0, "devices": queues,
        "makespan_s": end - start, "barrier_idle_s": 0.0, "efficiency": 0.85, "ideal_s": (end - start) * 0.9,
        "overhead": 0.11, "lower_bound_s": (end - start) * 0.85, "name": "bench", "run_id": "bench00000000",
        "model": {"type": "qwen_image_edit", "path": "Qwen/Qwen-Image-Edit"}, "started_at": start,
        "finished_at": end}))
    (folder / "workers.json").write_text(json.dumps(workers))
    (folder / "config.resolved.yaml").write_text(yaml.safe_dump({
        "name": "bench", "model": {"type": "qwen_image_edit", "path": "Qwen/Qwen-Image-Edit", "dtype": "bfloat16"},
        "schedule": {"mode": "sync"}}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=5000)
    p.add_argument("--devices", type=int, default=6)
    p.add_argument("--folder", type=Path, default=Path("/tmp/editbatch-report-bench"))
    args = p.parse_args(argv)
    began = time.perf_counter()
    synthesise(args.folder, args.items, args.devices)
    print(f"synthesised {args.items} items on {args.devices} devices in {time.perf_counter() - began:.1f}s: "
          f"{args.folder}")
    first = write_report([args.folder])
    second = write_report([args.folder])
    size = first.html.stat().st_size / 1e6
    thumbs = sum(f.stat().st_size for f in (args.folder / "report" / "thumbs").iterdir()) / 1e6
    print(f"report, first build (thumbnails made): {first.seconds:.1f}s")
    print(f"report, second build (thumbnails reused): {second.seconds:.1f}s")
    print(f"report.html {size:.1f} MB, thumbnails {thumbs:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
