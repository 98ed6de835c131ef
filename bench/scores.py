"""What scoring costs: worker-side metrics per item as a share of the edit, and judge throughput vs the limit.

1. Worker-side: a tiny random-weight pipeline (default InstructPix2Pix, 64x64, the model's default steps) edits
   `--items` images in this process; each output is then scored with every metric (pixel L1/L2/PSNR/SSIM against
   input and target, CLIP-I/T/direction and DINOv2 with the `tiny` models). Prints the median edit time, the
   median scoring time and their ratio, and the one-off scorer load time against the model load time.
2. Judge: `--judge-items` items asked by 4 judge threads of a fake OpenAI-compatible server on 127.0.0.1 (answer
   delay `--delay`), under one shared rate limit in a private Redis (`--rpm`, burst rpm/10). Prints requests per
   second achieved against the limit, and the most requests seen in any 1 s and 5 s window.

    python bench/scores.py
    python bench/scores.py --family flux_kontext --items 20 --rpm 600 --judge-items 120
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


def judge_throughput(items: int, rpm: float, delay: float) -> None:
    from fake_judge import FakeJudge

    from editbatch.cluster.redis_server import RedisServer
    from editbatch.redisconn import connect
    from editbatch.scores.judge.client import JudgeSettings
    from editbatch.scores.judge.ratelimit import SharedRateLimit
    from editbatch.scores.judge.stage import JudgeJob, JudgeStage
    from editbatch.scores.presets import PRESETS

    server_redis = RedisServer()
    url = server_redis.start()
    try:
        with tempfile.TemporaryDirectory() as tmp, FakeJudge(delay_s=delay) as server:
            image = Path(tmp) / "out.png"
            Image.new("RGB", (32, 32), (1, 2, 3)).save(image)
            redis = connect(url)
            limiter = SharedRateLimit(redis, "bench", "fake", requests_per_minute=rpm)
            stage = JudgeStage(PRESETS["gedit"], JudgeSettings(server.url, "fake-2026-01-01"), "id={id}", None,
                               limiter, workers=4)
            jobs = [JudgeJob(f"j{n}", "x", image, [], fields={"id": f"j{n}"}) for n in range(items)]
            began = time.perf_counter()
            stage.run(jobs, lambda job, record: None)
            took = time.perf_counter() - began
            times = sorted(t for ts in server.requests.values() for t in ts)
            redis.close()
    finally:
        server_redis.stop()
    burst = max(1.0, rpm / 10)
    worst = {w: max(sum(1 for t in times if s <= t < s + w) for s in times) for w in (1.0, 5.0)}
    steady = (len(times) - int(burst) - 1) / (times[-1] - times[int(burst)])  # after the bucket's first burst
    print(f"judge (4 threads, {items} items, answer delay {delay * 1000:.0f} ms, limit {rpm:g}/min = "
          f"{rpm / 60:.2f}/s, burst {burst:g}): {len(times) / took:.2f} requests/s overall, {steady:.2f}/s after the "
          f"burst ({steady / (rpm / 60):.2f} of the limit); most in any 1 s: {worst[1.0]}, any 5 s: {worst[5.0]} "
          f"(bound burst + w x rate: {burst + rpm / 60:.0f} and {burst + 5 * rpm / 60:.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="instruct_pix2pix")
    parser.add_argument("--items", type=int, default=12)
    parser.add_argument("--rpm", type=float, default=300)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--judge-items", type=int, default=150)
    args = parser.parse_args()
    worker_side(args.family, args.items)
    judge_throughput(args.judge_items, args.rpm, args.delay)


if __name__ == "__main__":
    main()
