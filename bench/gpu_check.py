"""Qwen-Image-Edit on one GPU: a bare diffusers loop against editbatch, same weights, same items.

Builds a pipeline shaped like Qwen/Qwen-Image-Edit from configs, with random
bf16 weights (nothing is downloaded): the real QwenImageTransformer2DModel
(60 layers, 24 heads x 128, joint_attention_dim 3584, in_channels 64, about
20.4 B parameters), a Qwen2.5-VL-7B-shaped text encoder (28 layers, hidden
3584, vision tower 32 blocks; about 8.3 B), the real VAE, and the offline
byte-level tokenizer and processor of editbatch's tiny pipelines. It saves the
pipeline with save_pretrained to a local folder, then edits the same N
1024x1024 items

  (a) as a bare diffusers loop: one pipeline call per image, seeded generator, PNG save;
  (b) through editbatch: execute() with model {type: qwen_image_edit, path: <folder>,
      dtype: bfloat16} and cluster {broker: auto, devices: [0]} (a private Redis and one
      worker process),

and prints seconds per image, peak GPU memory and the ratio (b)/(a). (a) is
timed and measured in this process. (b) is timed from the manifest (worker
clocks around each model call) and the run's makespan; its peak memory is
torch.cuda.max_memory_allocated() inside the worker, read through a small
probe (a sitecustomize.py on the worker's PYTHONPATH that wraps the adapter's
load() and edit() and writes the numbers to a file; nothing in editbatch changes).
Both peaks are taken after the weights are loaded (stats reset after load), so
they show weights + activations of the edits.

The full model needs about 58 GB of GPU memory and of disk for the saved
folder (and is read twice, once per path). --layers N shrinks the transformer
to N layers and the text encoder in proportion (28 x N / 60); the script says
what it reduced and refuses to start when the disk or the GPU is too small.
Per-image times scale with --steps; the ratio is what this check is about.

    python bench/gpu_check.py                                  # full size: 80 GB GPU, ~60 GB free disk
    python bench/gpu_check.py --layers 20 --images 3 --steps 8 # fits a 10-minute call on one H100
    python bench/gpu_check.py --cpu-smoke                      # tiny dims on CPU: exercises every code path

Exit codes: 0 done; 1 a path failed; 2 no CUDA device (without --cpu-smoke), too little disk or GPU memory.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REAL_TRANSFORMER_LAYERS = 60
REAL_TEXT_LAYERS = 28


def fail(message: str, code: int = 2) -> None:
    print(f"gpu_check: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=REAL_TRANSFORMER_LAYERS,
                   help="transformer layers (real: 60); the text encoder keeps 28 x N / 60 of its 28")
    p.add_argument("--images", type=int, default=4, help="items edited by each path (default 4)")
    p.add_argument("--steps", type=int, default=8, help="num_inference_steps (the model card uses 50)")
    p.add_argument("--size", type=int, default=1024, help="output height and width (default 1024)")
    p.add_argument("--true-cfg-scale", type=float, default=4.0,
                   help="4.0 (default, the card's) runs two transformer passes per step; 1 runs one")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workdir", default=None, help="where the model and runs go (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the saved model and the outputs")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny dims on CPU (1 layer, small widths, 256 px, 2 steps): checks the code paths only")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.images = min(args.images, 2)
        args.steps = min(args.steps, 2)
        args.size = min(args.size, 256)
    if not 1 <= args.layers <= REAL_TRANSFORMER_LAYERS:
        p.error(f"--layers must be 1..{REAL_TRANSFORMER_LAYERS}")
    if args.images < 1 or args.steps < 1 or args.size < 64:
        p.error("--images and --steps must be >= 1, --size >= 64")
    return args


# ---------------------------------------------------------------- building the pipeline


def shapes(args) -> dict:
    """Constructor arguments of every component, and what was reduced from the real model."""
    from editbatch.models.tiny.text import qwen_tokenizer

    tokenizer = qwen_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    token_ids = dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                     vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    special = dict(bos_token_id=tokenizer.eos_token_id, eos_token_id=ids("<|im_end|>"),
                   pad_token_id=tokenizer.pad_token_id)
    if args.cpu_smoke:
        text_layers = 1
        text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=2, rope_theta=1e6,
                    rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, **special)
        vision = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=32,
                      fullatt_block_indexes=[0])
        transformer = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=1, attention_head_dim=32,
                           num_attention_heads=2, joint_attention_dim=32, guidance_embeds=False,
                           axes_dims_rope=(8, 12, 12))
        vae = dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=0)
        reduced = ["--cpu-smoke: tiny dims everywhere (transformer 1 layer x 2 heads x 32, text encoder 1 layer "
                   "x 32 wide, vision 1 block, VAE base 8); sizes and steps capped at "
                   f"{args.size}px / {args.steps} steps"]
    else:
        text_layers = max(1, round(REAL_TEXT_LAYERS * args.layers / REAL_TRANSFORMER_LAYERS))
        # Qwen2.5-VL-7B-Instruct: the text encoder of Qwen-Image-Edit. The vocabulary keeps its real
        # size (the embedding and lm_head weigh 1.1 GB each); the offline tokenizer uses its first ids.
        text = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=text_layers,
                    num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                    rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=False,
                    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, **special)
        vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                      fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)
        transformer = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=args.layers,
                           attention_head_dim=128, num_attention_heads=24, joint_attention_dim=3584,
                           guidance_embeds=False, axes_dims_rope=(16, 56, 56))
        vae = {}  # AutoencoderKLQwenImage's defaults are Qwen-Image's VAE
        reduced = []
        if args.layers != REAL_TRANSFORMER_LAYERS:
            reduced.append(f"transformer layers {REAL_TRANSFORMER_LAYERS} -> {args.layers}")
            reduced.append(f"text encoder layers {REAL_TEXT_LAYERS} -> {text_layers} "
                           "(vision tower kept at 32 blocks, vocabulary at 152064)")
    return dict(tokenizer=tokenizer, text=text, vision=vision, token_ids=token_ids, transformer=transformer,
                vae=vae, reduced=reduced)


@contextlib.contextmanager
def default_dtype(dtype):
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_pipeline(spec: dict, device: str, dtype):
    """The pipeline with random weights, created directly on `device` in `dtype` (no fp32 copy)."""
    import torch
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPipeline,
                           QwenImageTransformer2DModel)
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from editbatch.models.tiny.processor import OfflineQwen2VLProcessor

    # Qwen-Image-Edit's processor/preprocessor_config.json: min_pixels 3136, max_pixels 12845056.
    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": 3136, "longest_edge": 12845056})
    processor = OfflineQwen2VLProcessor(image_processor=image_processor, tokenizer=spec["tokenizer"])
    with torch.device(device), default_dtype(dtype):
        text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
            text_config=spec["text"], vision_config=spec["vision"], tie_word_embeddings=False, **spec["token_ids"]))
        transformer = QwenImageTransformer2DModel(**spec["transformer"])
        vae = AutoencoderKLQwenImage(**spec["vae"])
    scheduler = FlowMatchEulerDiscreteScheduler(  # Qwen-Image-Edit's scheduler_config.json
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9,
        num_train_timesteps=1000, shift=1.0, shift_terminal=0.02,
        time_shift_type="exponential", use_dynamic_shifting=True)
    pipe = QwenImageEditPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                                 tokenizer=spec["tokenizer"], processor=processor, transformer=transformer)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def count_params(spec: dict) -> dict[str, int]:
    """Parameters per component, from a build on the meta device (no memory, no time)."""
    import torch

    pipe = build_pipeline(spec, "meta", torch.bfloat16)
    return {name: sum(p.numel() for p in m.parameters())
            for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


# ---------------------------------------------------------------- the probe inside the worker


PROBE = '''\
"""Written by bench/gpu_check.py: records GPU memory inside the editbatch worker (load and edits)."""
import importlib.machinery, importlib.util, os, sys

_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here])
if _spec is not None:  # keep whatever sitecustomize this Python had
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)


def _install(out_dir):
    import json, resource, time
    from editbatch.models import diffusers_common as dc

    state = {"pid": os.getpid(), "edits": 0, "loaded_bytes": None, "peak_bytes": None, "maxrss_kb": None}

    def cuda():
        import torch
        return torch if torch.cuda.is_available() else None

    def write():
        state["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        path = os.path.join(out_dir, "worker-%d.json" % os.getpid())
        with open(path + ".tmp", "w") as fh:
            json.dump(state, fh)
        os.replace(path + ".tmp", path)

    load, edit = dc.DiffusersEditModel.load, dc.DiffusersEditModel.edit

    def probed_load(self):
        load(self)
        torch = cuda()
        if torch is not None:
            torch.cuda.synchronize()
            state["loaded_bytes"] = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        write()

    def probed_edit(self, request):
        try:
            return edit(self, request)
        finally:
            torch = cuda()
            if torch is not None:
                state["peak_bytes"] = torch.cuda.max_memory_allocated()
            state["edits"] += 1
            write()

    dc.DiffusersEditModel.load, dc.DiffusersEditModel.edit = probed_load, probed_edit


if os.environ.get("GPU_CHECK_PROBE_DIR"):
    try:
        _install(os.environ["GPU_CHECK_PROBE_DIR"])
    except Exception as exc:  # never stop the worker for a measurement
        print("gpu_check probe not installed: %r" % (exc,), file=sys.stderr)
'''


@contextlib.contextmanager
def probe_in_workers(folder: Path):
    """Workers started inside this block run PROBE at interpreter start-up (they inherit os.environ)."""
    site = folder / "probe-site"
    results = folder / "probe-results"
    site.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(PROBE, encoding="utf-8")
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "GPU_CHECK_PROBE_DIR")}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), saved["PYTHONPATH"]) if p)
    os.environ["GPU_CHECK_PROBE_DIR"] = str(results)
    try:
        yield results
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---------------------------------------------------------------- the two paths


def make_items(folder: Path, n: int, size: int) -> list[dict]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        rng = np.random.RandomState(i)
        small = rng.randint(0, 256, (16, 16, 3), dtype=np.uint8)  # smooth-ish content, not pure noise
        Image.fromarray(small, "RGB").resize((size, size), Image.Resampling.BICUBIC).save(folder / f"in-{i}.png")
        rows.append({"id": f"item-{i:03d}", "image": f"in-{i}.png",
                     "instruction": f"make the scene look like winter, variation {i}"})
    (folder / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def call_params(args) -> dict:
    params = {"num_inference_steps": args.steps, "true_cfg_scale": args.true_cfg_scale,
              "height": args.size, "width": args.size}
    if args.true_cfg_scale > 1:
        params["negative_prompt"] = " "  # what the editbatch adapter adds too
    return params


def bare_loop(args, model_dir: Path, data: Path, rows: list[dict], out: Path, device: str, dtype) -> dict:
    """(a): from_pretrained, then per image: open, pipeline call with a seeded generator, PNG save."""
    import torch
    from diffusers import QwenImageEditPipeline
    from PIL import Image

    import editbatch.models.tiny.processor  # noqa: F401  (model_index.json names this module)
    from editbatch.seeding import item_seed

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    from editbatch.models.diffusers_common import _dtype_keyword  # dtype= or torch_dtype=, by diffusers version

    pipe = QwenImageEditPipeline.from_pretrained(model_dir, **{_dtype_keyword(): dtype}).to(device)
    pipe.set_progress_bar_config(disable=True)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        loaded = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    load_s = time.perf_counter() - t0
    walls, calls = [], []
    for row in rows:
        start = time.perf_counter()
        image = Image.open(data / row["image"]).convert("RGB")
        generator = torch.Generator(device=device).manual_seed(item_seed(args.seed, row["id"]))
        called = time.perf_counter()
        with torch.inference_mode():
            result = pipe(image=image, prompt=row["instruction"], generator=generator, output_type="pil",
                          **call_params(args)).images[0]
        calls.append(time.perf_counter() - called)
        result.save(out / f"{row['id']}.png", format="PNG", compress_level=1)  # as editbatch saves
        walls.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    del pipe
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        loaded_gb, peak_gb = loaded / 1e9, peak / 1e9
    else:
        loaded_gb = peak_gb = None
    return {"load_s": load_s, "walls": walls, "calls": calls, "total_s": sum(walls),
            "loaded_gb": loaded_gb, "peak_gb": peak_gb}


def editbatch_run(args, model_dir: Path, data: Path, out: Path, folder: Path, dtype_name: str) -> dict:
    """(b): execute() with a private Redis and one worker on device 0 (or cpu)."""
    from editbatch.config import validate_config
    from editbatch.producer.run import execute

    devices = ["cpu"] if args.cpu_smoke else [0]
    data_dict = {
        "name": "gpu-check", "dataset": {"path": str(data / "dataset.jsonl")}, "output_dir": str(out),
        "model": {"type": "qwen_image_edit", "path": str(model_dir), "dtype": dtype_name,
                  "params": call_params(args)},
        "cluster": {"broker": "auto", "devices": devices, "ready_timeout_s": 1800},
        "schedule": {"mode": "sync", "seed": args.seed, "task_timeout_s": 3600},
    }
    config = validate_config(data_dict, "gpu_check")
    with probe_in_workers(folder) as probe_dir:
        t0 = time.perf_counter()
        result = execute(config, source="gpu_check", stream=sys.stderr)
        run_s = time.perf_counter() - t0
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]
    bad = [f"{r['id']}: {r['status']} {r['error']}" for r in manifest if r["status"] != "ok"]
    if result.exit_code != 0 or bad:
        fail(f"editbatch run exited {result.exit_code}: " + "; ".join(bad[:3]), code=1)
    workers = json.loads((out / "workers.json").read_text())
    probes = [json.loads(p.read_text()) for p in probe_dir.glob("worker-*.json")]
    if not probes:
        print("gpu_check: warning: the worker probe wrote nothing; no peak memory for (b)", file=sys.stderr)
    probe = probes[0] if probes else {}
    calls = [r["finished_at"] - r["started_at"] for r in manifest]
    summary = result.summary
    gb = lambda b: None if b is None else b / 1e9  # noqa: E731
    return {"load_s": workers[0]["load_finished_at"] - workers[0]["load_started_at"], "calls": calls,
            "makespan_s": summary["makespan_s"], "run_s": run_s, "manifest": manifest,
            "loaded_gb": gb(probe.get("loaded_bytes")), "peak_gb": gb(probe.get("peak_bytes")),
            "probe_edits": probe.get("edits"), "worker_maxrss_gb": (probe.get("maxrss_kb") or 0) / 1e6 or None}


# ---------------------------------------------------------------- report


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def steady(values: list[float]) -> float:
    """Mean without the first image (CUDA/cuBLAS warm-up); the plain mean when there is only one."""
    return mean(values[1:]) if len(values) > 1 else mean(values)


def count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def fmt(value, spec=".2f", unit="") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def report(args, a: dict, b: dict, params: dict[str, int], same: int, device_name: str) -> None:
    n = args.images
    b_wall = b["makespan_s"] / n
    a_wall = a["total_s"] / n
    rows = [
        ("(a) bare diffusers loop", fmt(a["load_s"], ".1f", " s"), fmt(a_wall, ".2f"), fmt(mean(a["calls"])),
         fmt(steady(a["calls"])), fmt(a["loaded_gb"], ".1f"), fmt(a["peak_gb"], ".1f")),
        ("(b) editbatch execute()", fmt(b["load_s"], ".1f", " s"), fmt(b_wall, ".2f"), fmt(mean(b["calls"])),
         fmt(steady(b["calls"])), fmt(b["loaded_gb"], ".1f"), fmt(b["peak_gb"], ".1f")),
    ]
    head = ("path", "load", "s/img wall", "s/img call", "call excl. 1st", "GB after load", "peak GB")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    print()
    print(f"Qwen-Image-Edit-shaped pipeline, random bf16 weights, on {device_name}")
    total = sum(params.values())
    print("  parameters: " + ", ".join(f"{k} {count(v)}" for k, v in params.items())
          + f"; total {count(total)} = {size(2 * total)} in bf16")
    print(f"  {n} item(s) at {args.size}x{args.size}, {args.steps} steps, true_cfg_scale {args.true_cfg_scale:g}")
    print()
    print(line(head))
    print(line(tuple("-" * w for w in widths)))
    for r in rows:
        print(line(r))
    print()
    print(f"ratio (b)/(a), wall per image:  {b_wall / a_wall:.3f}   "
          f"(a: loop total / {n}; b: run makespan, first submit to last finish, / {n})")
    print(f"ratio (b)/(a), model call:      {mean(b['calls']) / mean(a['calls']):.3f}   "
          f"(excl. first image: {steady(b['calls']) / steady(a['calls']):.3f})")
    print(f"outputs bit-identical between (a) and (b): {same}/{n}")
    print("wall = image open + pipeline call + PNG save (a), or dispatch + queue + worker decode + call + save (b);"
          " call = the pipeline call alone (b: the worker's started_at/finished_at in the manifest).")
    print("GB after load / peak: torch.cuda.memory_allocated() after loading, max_memory_allocated() over the "
          "edits (stats reset after load); (b) measured inside the worker.")
    if b.get("worker_maxrss_gb") is not None:
        print(f"worker max RSS: {b['worker_maxrss_gb']:.2f} GB; probe saw {b['probe_edits']} edit(s)")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.cpu_smoke:
        device, dtype_name, device_name = "cpu", "bfloat16", "CPU (smoke test: tiny dims, timings mean nothing)"
    else:
        if not torch.cuda.is_available():
            fail("no CUDA device is visible (torch.cuda.is_available() is False; torch "
                 f"{torch.__version__}, CUDA build {torch.version.cuda}); run it on a GPU machine, or use "
                 "--cpu-smoke to exercise the code paths on CPU")
        device, dtype_name = "cuda", "bfloat16"
        device_name = torch.cuda.get_device_name(0)
    dtype = torch.bfloat16
    os.environ.setdefault("TQDM_DISABLE", "1")

    spec = shapes(args)
    for what in spec["reduced"]:
        print(f"[gpu_check] reduced: {what}")
    if not spec["reduced"]:
        print("[gpu_check] full Qwen-Image-Edit dims: transformer 60 layers, text encoder 28 layers")
    params = count_params(spec)
    weight_bytes = 2 * sum(params.values())
    print(f"[gpu_check] weights: {size(weight_bytes)} in bf16 ("
          + ", ".join(f"{k} {count(v)} = {size(2 * v)}" for k, v in params.items()) + ")")

    root = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_check-"))
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < weight_bytes * 1.05 + 2e9:
        fail(f"{root}: {free / 1e9:.0f} GB free disk, the saved model needs about {weight_bytes / 1e9:.0f} GB; "
             "use --layers N (e.g. --layers 20) or --workdir on a larger disk")
    if device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        if weight_bytes * 1.1 > total:
            fail(f"{device_name} has {total / 1e9:.0f} GB, the weights alone take {weight_bytes / 1e9:.0f} GB; "
                 "use --layers N")

    model_dir, data = root / "model", root / "data"
    try:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        pipe = build_pipeline(spec, device, dtype)
        built = time.perf_counter() - t0
        pipe.save_pretrained(model_dir, max_shard_size="10GB")
        print(f"[gpu_check] built in {built:.1f}s, saved to {model_dir} in {time.perf_counter() - t0 - built:.1f}s")
        del pipe
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()

        rows = make_items(data, args.images, args.size)
        print(f"[gpu_check] (a) bare diffusers loop: {args.images} image(s)")
        a = bare_loop(args, model_dir, data, rows, root / "bare", device, dtype)
        print(f"[gpu_check] (b) editbatch execute(): {args.images} image(s), one worker on "
              f"{'cpu' if args.cpu_smoke else 'GPU 0'}")
        b = editbatch_run(args, model_dir, data, root / "run", root, dtype_name)
        same = sum((root / "bare" / f"{r['id']}.png").read_bytes() == (root / "run" / r["output"]).read_bytes()
                   for r in b["manifest"])
        report(args, a, b, params, same, device_name)
    finally:
        if args.keep:
            print(f"[gpu_check] kept {root}")
        elif not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
        else:
            shutil.rmtree(model_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
