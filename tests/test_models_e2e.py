"""Every adapter family end to end: `editbatch run` with `broker: auto`, real worker processes on CPU.

The tiny random-weight pipelines (``path: tiny``) are built once per module
into a private cache that the workers inherit through EDITBATCH_CACHE, so no
run builds or downloads anything. What is checked is what a user reads: exit
codes, PNG files, the manifest and stderr.

Run time is dominated by worker start-up (importing torch and diffusers, about
5-8 s per worker on two cores) and by the Qwen pipelines, which VAE-encode the
condition image at about 1 MP whatever the output size; hence one worker for
the family runs, 2 items per Qwen run, and ``load_concurrency`` = the worker
count where several workers start.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")

from .conftest import read_run, run_cli, wait_gone, write_config, write_dataset  # noqa: E402

STEPS = 2


# ---------------------------------------------------------------- helpers


def noise(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (height, width, channels) if channels else (height, width)
    pixels = np.random.RandomState(seed).randint(0, 256, shape, dtype=np.uint8)
    return Image.fromarray(pixels, mode if channels else "L")


def make_inputs(folder: Path) -> dict[str, Path]:
    """One input per decoding path the worker has: RGB, RGBA, palette (with transparency), grayscale,
    and a JPEG whose EXIF says "rotate 90 degrees" (stored 48x32, shown 32x48)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.png" for name in ("rgb", "rgba", "palette", "gray")}
    noise(40, 32, 1).save(paths["rgb"])
    rgba = noise(36, 28, 2, "RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))  # fully transparent to opaque
    rgba.save(paths["rgba"])
    palette = noise(40, 24, 3).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    palette.save(paths["palette"], transparency=0)
    noise(24, 40, 4, "L").save(paths["gray"])
    paths["exif"] = folder / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    noise(48, 32, 5).save(paths["exif"], "JPEG", exif=exif, quality=90)
    return paths


# id -> (input, expected input_size after decoding: EXIF orientation applied)
def pix2pix_rows(inputs: dict[str, Path]) -> list[dict]:
    return [
        {"id": "rgb", "image": str(inputs["rgb"]), "instruction": "make it snow"},
        {"id": "rgba", "image": str(inputs["rgba"]), "instruction": "turn it blue"},
        {"id": "palette", "image": str(inputs["palette"]), "instruction": "add a hat"},
        {"id": "gray", "image": str(inputs["gray"]), "instruction": "make it colourful"},
        {"id": "exif-rotated", "image": str(inputs["exif"]), "instruction": "make it night"},
        {"id": "rgb-again", "image": str(inputs["rgb"]), "instruction": "make it snow"},
    ]


EXPECTED_INPUT_SIZE = {"rgb": [40, 32], "rgba": [36, 28], "palette": [40, 24], "gray": [24, 40],
                       "exif-rotated": [32, 48], "rgb-again": [40, 32]}


def run_config(folder: Path, name: str, model: dict, rows: list[dict], *, devices=("cpu",), mode: str = "sync",
               env: dict | None = None):
    """Write dataset + config under `folder/name`, run `editbatch run`; (process, manifest, summary, out dir)."""
    base = folder / name
    dataset = write_dataset(base, rows)
    out = base / "out"
    config = write_config(base / "config.yaml", name=name, dataset={"path": str(dataset)}, output_dir=str(out),
                          model={"dtype": "float32", **model},
                          cluster={"broker": "auto", "devices": list(devices), "load_concurrency": len(devices),
                                   "ready_timeout_s": 120},
                          schedule={"mode": mode, "seed": 7, "task_timeout_s": 120})
    proc = run_cli("run", str(config), timeout=240, env=env)
    manifest, summary = read_run(out) if (out / "summary.json").exists() else ([], {})
    return proc, manifest, summary, out


def check_outputs(proc, manifest, summary, out: Path, n: int) -> dict[str, dict]:
    """Every item ok with a real RGB PNG of the recorded size; returns the manifest by id."""
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert summary["ok"] == n and summary["failed"] == 0 and summary["invalid"] == 0
    assert len(manifest) == n
    for r in manifest:
        assert r["status"] == "ok" and r["error"] is None, r
        path = out / r["output"]
        with Image.open(path) as img:
            assert img.format == "PNG" and img.mode == "RGB"
            assert list(img.size) == r["output_size"], r
            img.verify()
        assert r["input_size"] and r["output_size"] and r["size_policy"] in ("input", "native", "fixed"), r
    return {r["id"]: r for r in manifest}


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    """A private tiny-pipeline cache, built here once; workers find it through EDITBATCH_CACHE."""
    root = tmp_path_factory.mktemp("tiny-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDITBATCH_CACHE", str(root))
        from editbatch.models.tiny import FAMILIES, ensure_tiny

        for family in FAMILIES:
            ensure_tiny(family)
    return {"EDITBATCH_CACHE": str(root)}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def pix2pix_runs(tmp_path_factory, tiny_env, inputs):
    """The same six InstructPix2Pix items two ways: 1 worker in sync mode and 3 workers in nosync mode
    with the items reversed (so they land on other workers). CPU workers run cluster.cpu_threads
    torch threads (default 1) however many share the machine, so float reductions split the same
    way in both. A 3-worker sync run would add about 25 s of worker start-up and no new path."""
    root = tmp_path_factory.mktemp("pix2pix")
    model = {"type": "instruct_pix2pix", "path": "tiny", "params": {"num_inference_steps": STEPS}}
    rows = pix2pix_rows(inputs)
    return {
        "one-sync": run_config(root, "one-sync", model, rows, devices=["cpu"], mode="sync", env=tiny_env),
        "three-nosync-reversed": run_config(root, "three-nosync", model, rows[::-1], devices=["cpu"] * 3,
                                            mode="nosync", env=tiny_env),
    }


# ---------------------------------------------------------------- InstructPix2Pix: inputs and determinism


def test_instruct_pix2pix_runs_every_kind_of_input(pix2pix_runs):
    proc, manifest, summary, out = pix2pix_runs["one-sync"]
    by_id = check_outputs(proc, manifest, summary, out, 6)
    for item_id, size in EXPECTED_INPUT_SIZE.items():
        r = by_id[item_id]
        # EXIF orientation applied before anything else: the rotated JPEG is recorded as 32x48, not 48x32.
        assert r["input_size"] == size, (item_id, r["input_size"])
        # Default policy without height/width: the output has the input's exact size (also off the 8-px grid).
        assert r["size_policy"] == "input" and r["output_size"] == size
        assert r["device"] == "cpu0" and r["batch"] == r["index"]
    assert "Batch synchronization: ENABLED" in proc.stdout


def test_instruct_pix2pix_outputs_do_not_depend_on_worker_mode_or_order(pix2pix_runs):
    bit_exact = ("one-sync", "three-nosync-reversed")
    digests = {}
    for run in bit_exact:
        proc, manifest, summary, out = pix2pix_runs[run]
        check_outputs(proc, manifest, summary, out, 6)
        digests[run] = {r["id"]: (r["seed"], file_digest(out / r["output"])) for r in manifest}
    reference = digests["one-sync"]
    for run, found in digests.items():
        assert found == reference, f"{run} differs from one-sync: " + ", ".join(
            i for i in reference if found.get(i) != reference[i])
    # Not trivially equal: the same input and instruction under another id (another seed) gives another image.
    assert reference["rgb"][1] != reference["rgb-again"][1]
    assert len({d for _, d in reference.values()}) == 6
    # The runs really spread the items differently over the workers.
    device = {run: {r["id"]: r["device"] for r in pix2pix_runs[run][1]} for run in bit_exact}
    assert set(device["one-sync"].values()) == {"cpu0"}
    assert set(device["three-nosync-reversed"].values()) == {"cpu0", "cpu1", "cpu2"}
    # nosync: row i of the (reversed) file runs on cpu(i mod 3); "rgb" is row 5 there, on cpu2.
    for r in pix2pix_runs["three-nosync-reversed"][1]:
        assert r["device"] == f"cpu{r['index'] % 3}"
    assert device["three-nosync-reversed"]["rgb"] == "cpu2"
    assert "Batch synchronization: DISABLED" in pix2pix_runs["three-nosync-reversed"][0].stdout


# ---------------------------------------------------------------- the other families


def test_flux_kontext_end_to_end(tmp_path, tiny_env, inputs):
    rows = [{"id": "flux-rgb", "image": str(inputs["rgb"]), "instruction": "make it snow"},
            {"id": "flux-gray", "image": str(inputs["gray"]), "instruction": "add colour"}]
    model = {"type": "flux_kontext", "path": "tiny",
             "params": {"num_inference_steps": STEPS, "height": 64, "width": 48, "guidance_scale": 2.5}}
    by_id = check_outputs(*run_config(tmp_path, "flux", model, rows, env=tiny_env), 2)
    for item_id, size in (("flux-rgb", [40, 32]), ("flux-gray", [24, 40])):
        r = by_id[item_id]
        assert r["input_size"] == size and r["size_policy"] == "fixed" and r["output_size"] == [48, 64]


def test_qwen_image_edit_end_to_end(tmp_path, tiny_env, inputs):
    rows = [{"id": "qwen-rgb", "image": str(inputs["rgb"]), "instruction": "make it snow"},
            {"id": "qwen-exif", "image": str(inputs["exif"]), "instruction": "make it night"}]
    # Default true_cfg_scale (4.0): the adapter adds negative_prompt " ", so both CFG passes run.
    model = {"type": "qwen_image_edit", "path": "tiny",
             "params": {"num_inference_steps": STEPS, "height": 64, "width": 64, "size": "input"}}
    by_id = check_outputs(*run_config(tmp_path, "qwen", model, rows, env=tiny_env), 2)
    for item_id, size in (("qwen-rgb", [40, 32]), ("qwen-exif", [32, 48])):
        r = by_id[item_id]
        assert r["input_size"] == size and r["size_policy"] == "input" and r["output_size"] == size


def test_qwen_image_edit_plus_takes_two_images_per_item(tmp_path, tiny_env, inputs):
    rows = [{"id": "plus-1", "images": [str(inputs["rgb"]), str(inputs["gray"])], "instruction": "put both together"},
            {"id": "plus-2", "images": [str(inputs["exif"]), str(inputs["rgba"])], "instruction": "swap the colours"}]
    model = {"type": "qwen_image_edit_plus", "path": "tiny",
             "params": {"num_inference_steps": STEPS, "height": 64, "width": 32, "true_cfg_scale": 1.0}}
    by_id = check_outputs(*run_config(tmp_path, "plus", model, rows, env=tiny_env), 2)
    assert by_id["plus-1"]["inputs"] == [str(inputs["rgb"]), str(inputs["gray"])]
    assert by_id["plus-2"]["inputs"] == [str(inputs["exif"]), str(inputs["rgba"])]
    # input_size is the first (edited) image's size; both outputs at the fixed size asked for.
    assert by_id["plus-1"]["input_size"] == [40, 32] and by_id["plus-2"]["input_size"] == [32, 48]
    for r in by_id.values():
        assert r["size_policy"] == "fixed" and r["output_size"] == [32, 64]


def test_generic_diffusers_type_end_to_end(tmp_path, tiny_env, inputs):
    rows = [{"id": "generic-rgb", "image": str(inputs["rgb"]), "instruction": "make it snow"},
            {"id": "generic-palette", "image": str(inputs["palette"]), "instruction": "add a hat"}]
    model = {"type": "diffusers", "path": "tiny:instruct_pix2pix",
             "pipeline_class": "StableDiffusionInstructPix2PixPipeline",
             "params": {"num_inference_steps": STEPS, "image_guidance_scale": 1.5}}
    proc, manifest, summary, out = run_config(tmp_path, "generic", model, rows, env=tiny_env)
    by_id = check_outputs(proc, manifest, summary, out, 2)
    for item_id, size in (("generic-rgb", [40, 32]), ("generic-palette", [40, 24])):
        assert by_id[item_id]["input_size"] == size and by_id[item_id]["output_size"] == size
        assert by_id[item_id]["size_policy"] == "input"
    workers = json.loads((out / "workers.json").read_text())
    model = workers[0]["model"]
    assert (model["type"], model["path"]) == ("diffusers", "tiny:instruct_pix2pix")


# ---------------------------------------------------------------- a model that cannot load


@pytest.mark.parametrize("case", ["missing", "other-pipeline"])
def test_a_model_that_cannot_load_exits_2_with_one_clear_line(tmp_path, tiny_env, inputs, case):
    if case == "missing":
        path = str(tmp_path / "no-such-model")
        expect = [f"model path not found: {path}"]
    else:  # a real pipeline folder, but of another family: the message names the type that fits
        path = str(Path(tiny_env["EDITBATCH_CACHE"]) / "tiny" / "qwen_image_edit-v1")
        expect = [f"{path} holds a QwenImageEditPipeline, not a StableDiffusionInstructPix2PixPipeline",
                  "use model.type: qwen_image_edit"]
    rows = [{"id": "a", "image": str(inputs["rgb"]), "instruction": "make it snow"}]
    model = {"type": "instruct_pix2pix", "path": path, "params": {"num_inference_steps": STEPS}}
    proc, manifest, summary, out = run_config(tmp_path, case, model, rows, env=tiny_env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("editbatch: error: worker failed to load its model: cpu0: ModelLoadError: ")
    for words in expect:
        assert words in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    # Nothing ran, nothing is left running.
    assert not list((out / "images").glob("*.png")) and not (out / "summary.json").exists()
    started = json.loads((out / "logs" / "cluster.json").read_text())
    pids = [started["redis_pid"], *started["workers"].values()]
    assert len(pids) == 2 and wait_gone(pids, timeout=5) == []
