"""How long `editbatch report` takes on a large run, its peak memory, and how long a browser takes to open it.

    python bench/report.py [--items 5000] [--devices 6] [--folder /tmp/editbatch-report-bench]
    python bench/report.py --items 100000 --no-cold

The folder holds what a real run writes (manifest.jsonl, summary.json,
workers.json, config.resolved.yaml, run.json, images/) with 512x512 inputs
(one per 10 items, as datasets reuse images) and 512x512 outputs. Past the
first DISTINCT items, outputs and their thumbnails are hard links to earlier
ones (a 100,000-item folder in seconds; the report still sees a file per item).
Builds, each in its own process (peak RSS is the build's own):

- after a run: the thumbnails were written as the workers saved each output
  (simulated with the workers' own function, timed apart as cost per item);
- a cold folder (an older run, a copy): the report makes every thumbnail (skip with --no-cold);
- a rebuild, reusing them.

Then headless Chromium opens the page (`--dump-dom`, wall time from start to
exit, a blank page's time given apart) and opens it with a search for the
last item (`#q=`), which loads the index and the chunk holding it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from PIL import Image

from editbatch.report.thumbnails import THUMBS, thumbnail_path, write_item_thumbnails

CATEGORIES = ("style", "color", "add", "remove", "background", "text")
DISTINCT = 500  # items with images of their own; later ones link to these


def picture(size: int, seed: int) -> Image.Image:
    """A cheap image with some structure, so JPEG and PNG sizes are realistic rather than trivial."""
    rng = random.Random(seed)
    small = Image.new("RGB", (16, 16))
    small.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(256)])
    return small.resize((size, size), Image.BICUBIC)


def synthesise(folder: Path, items: int, devices: int, seconds: float = 2.0) -> list[float]:
    """Write the run folder; returns the seconds each ok item's worker thumbnails took."""
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "images").mkdir(parents=True)
    (folder / "inputs").mkdir()
    queues = [f"gpu{d}" for d in range(devices)]
    rng = random.Random(0)
    t0 = 1_700_000_000.0
    workers = [{"device": q, "queue": q, "host": "bench", "pid": 1000 + d, "worker": f"{q}@bench",
                "model": {"type": "qwen_image_edit", "path": "Qwen/Qwen-Image-Edit"},
                "load_started_at": t0 + 40 * d, "load_finished_at": t0 + 40 * d + 38,
                "ready_at": t0 + 40 * d + 38.5} for d, q in enumerate(queues)]
    start = t0 + 40 * devices
    free = {q: start for q in queues}
    records, thumb_s, made = [], [], []
    for i in range(items):
        source = folder / "inputs" / f"in-{i // 10:05d}.jpg"
        if i % 10 == 0 and i >= DISTINCT:
            os.link(folder / "inputs" / f"in-{i // 10 % (DISTINCT // 10):05d}.jpg", source)
        elif i % 10 == 0:
            given = picture(512, i)
            given.save(source, quality=90)
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
        if status == "ok" and i < DISTINCT:
            output, image = folder / "images" / f"{name}.png", picture(512, 100_000 + i)
            image.save(output, compress_level=1)
            began_thumbs = time.perf_counter()
            write_item_thumbnails(folder, output, image, [(source, given)])
            thumb_s.append(time.perf_counter() - began_thumbs)
            made.append(output)
        elif status == "ok":
            output, like = folder / "images" / f"{name}.png", made[i % len(made)]
            os.link(like, output)
            os.link(thumbnail_path(folder, like), thumbnail_path(folder, output))
        records.append({"id": name, "index": i, "status": status, "output": f"images/{name}.png" if status == "ok"
                        else None, "device": queue, "worker": f"{queue}@bench", "batch": batch, "seed": i,
                        "submitted_at": start, "started_at": began, "finished_at": began + took,
                        "reported_at": began + took + 0.01, "error": "RuntimeError: CUDA out of memory"
                        if status == "failed" else None, "category": CATEGORIES[i % len(CATEGORIES)],
                        "instruction": f"edit number {i}: make it {CATEGORIES[i % 6]}",
                        "inputs": [str(source)]})
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
    return thumb_s


# The build's own peak (VmHWM): a child's ru_maxrss can carry this process's RSS from before its exec.
BUILD = """
import json, sys
from editbatch.report import write_report
r = write_report([sys.argv[1]])
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": r.seconds, "peak_mb": hwm / 1024}))
"""


def build(folder: Path) -> tuple[float, float]:
    """One `write_report` in its own process: (seconds, peak RSS in MB)."""
    proc = subprocess.run([sys.executable, "-c", BUILD, str(folder)], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"report build failed: {proc.stdout}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["seconds"], out["peak_mb"]


def chromium(url: str) -> tuple[float, str]:
    """Wall seconds for headless Chromium to load `url` and dump its DOM (after the load event)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        return float("nan"), ""
    began = time.perf_counter()
    proc = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
                          capture_output=True, text=True, timeout=600)
    return time.perf_counter() - began, proc.stdout


def size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 1e6
    files = {f.stat().st_ino: f.stat().st_size for f in path.rglob("*") if f.is_file()} if path.is_dir() else {}
    return sum(files.values()) / 1e6  # hard links once


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=5000)
    p.add_argument("--devices", type=int, default=6)
    p.add_argument("--folder", type=Path, default=Path("/tmp/editbatch-report-bench"))
    p.add_argument("--no-cold", action="store_true", help="skip the build that makes every thumbnail")
    args = p.parse_args(argv)
    began = time.perf_counter()
    thumb_s = sorted(synthesise(args.folder, args.items, args.devices))
    print(f"synthesised {args.items} items on {args.devices} devices in {time.perf_counter() - began:.1f}s: "
          f"{args.folder}")
    print(f"worker thumbnails: {sum(thumb_s) / len(thumb_s) * 1e3:.1f} ms per item on average "
          f"(median {thumb_s[len(thumb_s) // 2] * 1e3:.1f}, p99 {thumb_s[int(len(thumb_s) * 0.99)] * 1e3:.1f})")
    after_run = build(args.folder)
    print(f"report after a run (thumbnails made by the workers): {after_run[0]:.1f}s, peak RSS {after_run[1]:.0f} MB")
    if not args.no_cold:
        shutil.rmtree(args.folder / "report")
        cold = build(args.folder)
        print(f"report of a cold folder (thumbnails made, {os.cpu_count()} threads): {cold[0]:.1f}s, "
              f"peak RSS {cold[1]:.0f} MB")
    rebuild = build(args.folder)
    print(f"report rebuilt (thumbnails reused): {rebuild[0]:.1f}s, peak RSS {rebuild[1]:.0f} MB")
    html = args.folder / "report.html"
    chunks = size_mb(args.folder / "report" / "items")
    print(f"report.html {size_mb(html):.2f} MB, gallery chunks and index {chunks:.1f} MB, "
          f"thumbnails {size_mb(args.folder / THUMBS):.1f} MB")
    blank, _ = chromium("about:blank")
    opened, dom = chromium(html.as_uri())
    last = f"item-{args.items - 1:05d}"
    searched, found = chromium(html.as_uri() + "#q=" + last)
    hit = f'data-id="{last}"' in found
    print(f"headless Chromium --dump-dom: blank page {blank:.1f}s, report {opened:.1f}s "
          f"({dom.count('<tr id=')} rows in the DOM), searching the last item {searched:.1f}s "
          f"(found: {'yes' if hit else 'no'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
