"""The diffusers adapters end to end on tiny random pipelines (CPU, offline).

Each family is built once per session into a temporary cache. The Qwen tests
dominate the run time: those pipelines VAE-encode the condition image at
about 1 MP whatever the output size.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")

from editbatch.config import ModelConfig  # noqa: E402
from editbatch.devices import Device  # noqa: E402
from editbatch.errors import ModelLoadError  # noqa: E402
from editbatch.models.base import EditRequest  # noqa: E402
from editbatch.models.registry import get_model_class  # noqa: E402

CPU = Device("cpu", 0)
FAMILIES = ["instruct_pix2pix", "flux_kontext", "qwen_image_edit", "qwen_image_edit_plus"]
PARAMS = {"num_inference_steps": 2, "height": 64, "width": 64}
# Plus: two 1 MP condition encodes per call already; skip true CFG to halve the transformer passes.
EXTRA = {"qwen_image_edit_plus": {"true_cfg_scale": 1.0}}


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def digest(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("editbatch-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDITBATCH_CACHE", str(root))
        yield root


def make_model(type_: str, **config):
    model_config = ModelConfig(type=type_, **config)
    return get_model_class(type_)(model_config, CPU)


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request, cache):
    family = request.param
    model = make_model(family, params={**PARAMS, **EXTRA.get(family, {})})
    model.load()
    return model


def request_for(model, seed: int, **params) -> EditRequest:
    images = [noise_image(80, 60), noise_image(60, 80, seed=1)][: min(2, model.max_images)]
    return EditRequest("item-1", images, "make it look like winter", seed, {**model.config.params, **params})


def test_same_seed_same_bytes_other_seed_differs(loaded, cache):
    first = loaded.edit(request_for(loaded, seed=7))
    again = loaded.edit(request_for(loaded, seed=7))
    other = loaded.edit(request_for(loaded, seed=8))
    assert first.image.mode == "RGB" and first.image.size == (64, 64)
    assert digest(first.image) == digest(again.image)
    assert digest(first.image) != digest(other.image)
    assert first.info["input_size"] == [80, 60]
    assert first.info["output_size"] == [64, 64]
    assert first.info["size_policy"] == "fixed"
    if loaded.max_images > 1:
        assert first.info["input_sizes"] == [[80, 60], [60, 80]]
    assert (cache / "tiny" / f"{loaded.tiny_family}-v1" / "model_index.json").is_file()
    assert loaded.describe()["pipeline"] == loaded.pipeline_class


@pytest.mark.parametrize("family", ["instruct_pix2pix", "flux_kontext", "qwen_image_edit"])
def test_single_image_families_refuse_two(family):
    model = make_model(family)
    with pytest.raises(ValueError, match="at most 1 input image"):
        model.check_request(EditRequest("x", [noise_image(8, 8)] * 2, "edit", 0))
    with pytest.raises(ValueError, match="needs an input image"):
        model.check_request(EditRequest("x", [], "edit", 0))


def test_ensure_tiny_builds_once_and_deterministically(cache, tmp_path):
    from editbatch.models.tiny import build_tiny, ensure_tiny

    path = ensure_tiny("flux_kontext")
    assert path == cache / "tiny" / "flux_kontext-v1"
    stamp = (path / "model_index.json").stat().st_mtime_ns
    assert ensure_tiny("flux_kontext") == path
    assert (path / "model_index.json").stat().st_mtime_ns == stamp
    fresh = build_tiny("flux_kontext", tmp_path / "again")
    weights = "transformer/diffusion_pytorch_model.safetensors"
    assert (fresh / weights).read_bytes() == (path / weights).read_bytes()


def test_ensure_tiny_race_loser_uses_winner(cache, monkeypatch):
    import editbatch.models.tiny as tiny

    target = tiny.tiny_dir("instruct_pix2pix").with_name("race-v1")
    real_build = tiny.build_tiny

    def build_while_another_wins(family, out_dir):
        real_build(family, out_dir)
        real_build(family, target)  # another process renames its copy into place first
        (target / "winner").touch()
        return out_dir

    monkeypatch.setattr(tiny, "tiny_dir", lambda family: target)
    monkeypatch.setattr(tiny, "build_tiny", build_while_another_wins)
    assert tiny.ensure_tiny("flux_kontext") == target
    assert (target / "winner").exists()
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".race")] == []


def test_size_policy_input_resizes_back(cache):
    model = make_model("instruct_pix2pix", params={"num_inference_steps": 2})
    model.load()
    result = model.edit(EditRequest("a", [noise_image(50, 42)], "edit", 1, dict(model.config.params)))
    assert result.image.size == (50, 42)
    assert result.info == {
        "input_size": [50, 42], "generated_size": [48, 40], "output_size": [50, 42], "size_policy": "input"
    }
    native_params = {"num_inference_steps": 2, "size": "native"}
    native = model.edit(EditRequest("a", [noise_image(50, 42)], "edit", 1, native_params))
    assert native.image.size == (48, 40)
    with pytest.raises(ValueError, match="params.size"):
        model.edit(EditRequest("a", [noise_image(50, 42)], "edit", 1, {"size": "huge"}))


def test_generic_adapter_loads_folder_class(cache):
    params = {**PARAMS, "_auto_resize": False, "max_area": 64 * 64}
    model = make_model("diffusers", path="tiny:flux_kontext", params=params)
    model.load()
    assert type(model.pipe).__name__ == "FluxKontextPipeline"
    result = model.edit(EditRequest("a", [noise_image(64, 64)], "edit", 3, dict(model.config.params)))
    assert result.image.size == (64, 64)
    with pytest.raises(ModelLoadError, match="no pipeline class 'NoSuchPipeline'"):
        make_model("diffusers", path="tiny:flux_kontext", pipeline_class="NoSuchPipeline").load()


def test_wrong_pipeline_class_is_named(cache):
    from editbatch.models.tiny import ensure_tiny

    path = str(ensure_tiny("flux_kontext"))
    with pytest.raises(ModelLoadError) as err:
        make_model("instruct_pix2pix", path=path).load()
    message = str(err.value)
    assert "FluxKontextPipeline" in message and "StableDiffusionInstructPix2PixPipeline" in message
    assert "model.type: flux_kontext" in message


@pytest.mark.parametrize("family", ["instruct_pix2pix", "qwen_image_edit"])
def test_missing_or_empty_path(family, tmp_path):
    with pytest.raises(ModelLoadError, match="model path not found"):
        make_model(family, path=str(tmp_path / "nowhere")).load()
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        make_model(family, path=str(tmp_path)).load()


def test_same_bytes_in_another_process(cache):
    model = make_model("instruct_pix2pix", params=dict(PARAMS))
    model.load()
    here = digest(model.edit(request_for(model, seed=5)).image)
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from test_models_tiny import digest, make_model, request_for; "
        "m = make_model('instruct_pix2pix', params=dict(num_inference_steps=2, height=64, width=64)); m.load(); "
        "print(digest(m.edit(request_for(m, seed=5)).image))"
    )
    env = {**os.environ, "EDITBATCH_CACHE": str(cache)}
    out = subprocess.run(
        [sys.executable, "-c", script, os.path.dirname(__file__)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == here


def test_unknown_param_fails_at_load(cache):
    with pytest.raises(ModelLoadError, match="num_inference_step: .*did you mean 'num_inference_steps'"):
        make_model("instruct_pix2pix", params={"num_inference_step": 2}).load()


def test_a_cancelled_run_stops_the_pipeline_between_steps(loaded, cache):
    """`should_stop` is asked after every denoising step; once true, the call ends without an image."""
    from editbatch.models.base import EditCancelled

    asked = []

    def should_stop() -> bool:
        asked.append(True)
        return len(asked) >= 2  # the run is cancelled during the second step

    request = request_for(loaded, seed=7, num_inference_steps=4)
    request.should_stop = should_stop
    with pytest.raises(EditCancelled, match="run cancelled at denoising step 2"):
        loaded.edit(request)
    assert len(asked) == 2  # steps 3 and 4 never ran
    assert loaded.edit(request_for(loaded, seed=7)).image.size == (64, 64)  # the pipeline still serves
