"""Jobs of several models on warm workers (tiny diffusers pipelines): a LoRA swap keeps the base and gives
the outputs of a cold start with that LoRA; another model makes every worker reload, staggered."""

from __future__ import annotations

import hashlib
import json

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from .conftest import read_run, run_cli, simple_rows, write_config, write_dataset  # noqa: E402
from .jobs_helpers import Service  # noqa: E402

BASE = {"type": "instruct_pix2pix", "path": "tiny", "dtype": "float32", "params": {"num_inference_steps": 2}}


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDITBATCH_CACHE", str(root))
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def lora(tiny_env, tmp_path_factory):
    """A random LoRA for the tiny InstructPix2Pix UNet, saved as diffusers saves LoRA weights."""
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from editbatch.models.tiny import ensure_tiny

    torch.manual_seed(0)
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(ensure_tiny("instruct_pix2pix"))
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    folder = tmp_path_factory.mktemp("lora")
    layers = get_peft_model_state_dict(pipe.unet)
    StableDiffusionInstructPix2PixPipeline.save_lora_weights(folder, unet_lora_layers=layers)
    return folder


def digests(out) -> dict[str, str]:
    manifest, _ = read_run(out)
    return {r["id"]: hashlib.sha256((out / r["output"]).read_bytes()).hexdigest() for r in manifest}


def test_lora_swap_and_model_switch_between_jobs(tiny_env, lora, tmp_path_factory, sample_image):
    service = Service(tmp_path_factory.mktemp("models"), model=BASE, devices=["cpu", "cpu"])
    service.start(timeout=180)
    try:
        plain = service.job_config("plain", 2, sample_image, model=BASE)
        with_lora = service.job_config("lora", 2, sample_image, model={**BASE, "lora": {"path": str(lora)}})
        other = service.job_config("other", 2, sample_image,
                                   model={**BASE, "type": "diffusers", "path": "tiny:instruct_pix2pix"})
        proc = service.cli("submit", str(plain), str(with_lora), str(other), "--wait", timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr + service.log()
        ids = proc.stdout.split()[:3]
        records = [json.loads(service.cli("status", i, "--json").stdout) for i in ids]
        assert [r["switch"]["switched"] for r in records] == [[], ["cpu0", "cpu1"], ["cpu0", "cpu1"]]
        assert records[1]["switch"]["load"] == ["lora"] and records[2]["switch"]["load"] == ["model"]
        swap, switch = records[1]["switch"]["seconds"], records[2]["switch"]["seconds"]
        print(f"LoRA swap: {swap:.2f}s; model switch: {switch:.2f}s")
        workers = json.loads((service.root / "runs" / "other" / "workers.json").read_text())
        assert {w["load"] for w in workers} == {"model"}
        loads = sorted((w["load_started_at"], w["load_finished_at"]) for w in workers)
        assert loads[0][1] <= loads[1][0]  # load_concurrency 1: one after the other
        assert all(w["model"]["type"] == "diffusers" for w in workers)
        swapped = digests(service.root / "runs" / "lora")
        assert swapped != digests(service.root / "runs" / "plain")
    finally:
        service.close()

    # A cold start with the same LoRA computes the same images.
    root = tmp_path_factory.mktemp("cold")
    dataset = write_dataset(root, simple_rows(2, sample_image))
    config = write_config(root / "cold.yaml", name="cold", dataset={"path": str(dataset)},
                          output_dir=str(root / "out"), model={**BASE, "lora": {"path": str(lora)}},
                          cluster={"broker": "auto", "devices": ["cpu"]}, schedule={"mode": "balanced"})
    cold = run_cli("run", str(config), timeout=240)
    assert cold.returncode == 0, cold.stderr[-2000:]
    assert digests(root / "out") == swapped
