"""What scoring costs: worker-side metrics per item as a share of the edit, and judge throughput vs the limit.

1. Worker-side: a tiny random-weight pipeline (default InstructPix2Pix, 64x64, the model's default steps) edits
   `--items` images in this process; each output is then scored with every metric (pixel L1/L2/PSNR/SSIM against
   input and target, CLIP-I/T/direction and DINOv2 with the `tiny` models). Prints the median edit time, the
   median scoring time and their ratio, and the one-off scorer load time against the model load time.
2. Judge: `editbatch score` of `--judge-items` outputs, asked by `--judge-workers` judge worker processes
   (`--threads` each) of a fake OpenAI-compatible server on 127.0.0.1 (answer delay `--delay`), under one shared
   rate limit in a private Redis (`--rpm`, burst rpm/10). Prints requests per second achieved against the limit,
   and the most requests seen in any 1 s and 5 s window.

    python bench/scores.py
    python bench/scores.py --family flux_kontext --items 20 --rpm 600 --judge-items 120
    python bench/scores.py --judge-only --judge-workers 1 --threads 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# The demo's call arguments (configs/demo.yaml): a few steps, as the tiny pipelines are meant to run.
PARAMS = {"instruct_pix2pix": {"num_inference_steps": 4, "image_guidance_scale": 1.5, "guidance_scale": 7.5},
          "flux_kontext": {"num_inference_steps": 4, "height": 64, "width": 64}}
sys.path.insert(0, str(ROOT / "tests"))  # the fake judge server of the tests


def worker_side(family: str, items: int) -> None:
    from editbatch.config import ModelConfig
    from editbatch.devices import parse_device
    from editbatch.models.base import EditRequest
    from editbatch.models.registry import get_model_class
    from editbatch.scores.item import METRICS, ItemScorer, Texts

    model = get_model_class(family)(ModelConfig(type=family, path="tiny"), parse_device("cpu"))
    model.prepare()
    began = time.perf_counter()
    model.load()
    model_load = time.perf_counter() - began
    scorer = ItemScorer(METRICS)
    began = time.perf_counter()
    scorer.load()
    scorer_load = time.perf_counter() - began
    source = Image.effect_mandelbrot((64, 64), (-2, -1.5, 1, 1.5), 60).convert("RGB")
    target = source.rotate(90)
    edit_s, score_s = [], []
    texts = Texts("make it blue", "a fractal", "a blue fractal")
    for n in range(items):
        request = EditRequest(f"b{n}", [source], "make it blue", n, dict(PARAMS.get(family, {})))
        began = time.perf_counter()
        out = model.edit(request).image
        edit_s.append(time.perf_counter() - began)
        began = time.perf_counter()
        scorer.score(out, [source], target, texts)
        score_s.append(time.perf_counter() - began)
    e, s = statistics.median(edit_s[1:] or edit_s), statistics.median(score_s[1:] or score_s)
    print(f"worker-side ({family} tiny, {items} items, all {len(METRICS)} metrics): edit {e * 1000:.0f} ms, "
          f"scoring {s * 1000:.0f} ms per item = {s / e:.2f} of the edit; load: model {model_load:.2f} s, "
          f"scorers {scorer_load:.2f} s")


def judge_throughput(items: int, rpm: float, delay: float, workers: int, threads: int) -> None:
    import json
    import os
    import signal
    import subprocess

    import yaml
    from fake_judge import FakeJudge

    from editbatch.cluster.redis_server import RedisServer
    from editbatch.redisconn import connect
    from editbatch.scores.judge.setup import make_stage
    from editbatch.scores.judge.workers import serving
    from editbatch.workers.judging import load_judge_config

    server_redis = RedisServer()
    url = server_redis.start()
    procs: list[subprocess.Popen] = []
    env = {**os.environ, "EDITBATCH_BROKER": url}
    try:
        with tempfile.TemporaryDirectory() as tmp, FakeJudge(delay_s=delay) as server:
            folder, root = Path(tmp) / "outs", Path(tmp)
            folder.mkdir()
            Image.new("RGB", (32, 32), (1, 2, 3)).save(root / "in.png")
            rows = []
            for n in range(items):
                Image.new("RGB", (32, 32), (n % 256, 2, 3)).save(folder / f"j{n}.png")
                rows.append({"id": f"j{n}", "image": str(root / "in.png"), "instruction": "x"})
            (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (root / "template.txt").write_text("id={id}")
            config = root / "judge.yaml"
            config.write_text(yaml.safe_dump({
                "cluster": {"input_roots": [tmp], "output_roots": [tmp]},
                "evaluate": {"preset": "gedit", "bootstrap": 100, "judge": {
                    "url": server.url, "model": "fake-2026-01-01", "template": str(root / "template.txt"),
                    "workers": threads, "requests_per_minute": rpm}}}))
            for _ in range(workers):
                procs.append(subprocess.Popen([sys.executable, "-m", "editbatch", "judge-worker", "--config",
                                               str(config)], env=env, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
            queue = make_stage(load_judge_config(config).evaluate, str(config)).queue
            redis = connect(url)
            while serving(redis, "editbatch", queue) < workers:
                time.sleep(0.2)
            redis.close()
            began = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "editbatch", "score", str(folder), "--dataset",
                                   str(root / "data.jsonl"), "--config", str(config)], env=env, capture_output=True,
                                  text=True)
            took = time.perf_counter() - began
            assert done.returncode == 0, done.stdout + done.stderr
            times = sorted(t for ts in server.requests.values() for t in ts)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
        server_redis.stop()
    burst = max(1.0, rpm / 10)
    worst = {w: max(sum(1 for t in times if s <= t < s + w) for s in times) for w in (1.0, 5.0)}
    after_burst = ""
    if burst + 1 < len(times):  # else the bucket never ran dry: the workers set the pace
        steady = (len(times) - int(burst) - 1) / (times[-1] - times[int(burst)])
        after_burst = f", {steady:.2f}/s after the burst ({steady / (rpm / 60):.2f} of the limit)"
    print(f"judge ({workers} judge workers x {threads} threads, {items} items, answer delay {delay * 1000:.0f} ms, "
          f"limit {rpm:g}/min = {rpm / 60:.2f}/s, burst {burst:g}): `editbatch score` took {took:.1f}s, "
          f"{len(times) / (times[-1] - times[0]):.2f} requests/s first to last{after_burst}; most in any 1 s: "
          f"{worst[1.0]}, any 5 s: {worst[5.0]} (bound burst + w x rate: {burst + rpm / 60:.0f} and "
          f"{burst + 5 * rpm / 60:.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="instruct_pix2pix")
    parser.add_argument("--items", type=int, default=12)
    parser.add_argument("--rpm", type=float, default=300)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--judge-items", type=int, default=150)
    parser.add_argument("--judge-workers", type=int, default=4, help="judge worker processes")
    parser.add_argument("--threads", type=int, default=2, help="threads of each judge worker")
    parser.add_argument("--judge-only", action="store_true")
    args = parser.parse_args()
    if not args.judge_only:
        worker_side(args.family, args.items)
    judge_throughput(args.judge_items, args.rpm, args.delay, args.judge_workers, args.threads)


if __name__ == "__main__":
    main()
