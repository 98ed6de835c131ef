"""What every diffusers-backed adapter shares: loading a pipeline and running one edit.

Loading (`load_pipeline`) resolves the path (``tiny`` / ``tiny:<family>`` build
a cached random pipeline offline), checks a local folder holds the expected
pipeline class, loads straight into the target dtype, then applies LoRA,
placement or offloading, compile and the attention backend.

`DiffusersEditModel` is the base of the family adapters. It owns the size
policy (``params["size"]``, see `SIZE_POLICIES`), the seeded generator and the
info recorded for each item; a family only says which pipeline it runs and how
its call arguments are built (`call_kwargs`).
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ModelLoadError
from .base import EditCancelled, EditModel, EditRequest, EditResult

if TYPE_CHECKING:
    from PIL import Image

    from ..config import ModelConfig

log = logging.getLogger(__name__)

LORA_ADAPTER_NAME = "editbatch"

# Pipeline class in a model_index.json -> the adapter type that runs it.
ADAPTER_FOR_PIPELINE = {
    "StableDiffusionInstructPix2PixPipeline": "instruct_pix2pix",
    "QwenImageEditPipeline": "qwen_image_edit",
    "QwenImageEditPlusPipeline": "qwen_image_edit_plus",
    "FluxKontextPipeline": "flux_kontext",
}

# params["size"]: what happens to the generated image. The generation size is
# params height x width when given (rounded down to the model's multiple), else
# the family's native size for the input (each adapter's docstring says which).
SIZE_POLICIES = {
    "input": "resize the result back to the (first) input image's exact size (default without height/width)",
    "native": "keep the generated size",
    "fixed": "keep the generated size; requires params height and width (default when they are given)",
}


# ---------------------------------------------------------------- loading


def resolve_dtype(name: str, torch_device: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if torch_device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def resolve_path(path: str, tiny_family: str | None) -> str:
    """``tiny`` -> this family's cached tiny pipeline; ``tiny:<family>`` -> that family's; else unchanged."""
    from .tiny import FAMILIES, ensure_tiny

    family = None
    if path == "tiny":
        if tiny_family is None:
            choices = ", ".join(f"tiny:{f}" for f in FAMILIES)
            raise ModelLoadError(f"path 'tiny' needs a family here: use one of {choices}")
        family = tiny_family
    elif path.startswith("tiny:"):
        family = path.removeprefix("tiny:")
        if family not in FAMILIES:
            raise ModelLoadError(f"no tiny pipeline {family!r} (have: {', '.join(FAMILIES)})")
    return str(ensure_tiny(family)) if family else path


def _looks_local(path: str) -> bool:
    """Hub ids are ``org/name``; anything else path-like is meant as a local folder."""
    return path.startswith(("/", "./", "../", "~")) or path.count("/") > 1 or "\\" in path or path in (".", "..")


def check_local_pipeline(path: str, expected_class: str | None) -> str:
    """Raise ModelLoadError unless `path` (if local) is a pipeline folder holding `expected_class`.

    Returns what from_pretrained gets: the expanded folder, or the hub id unchanged.
    """
    local = Path(path).expanduser()
    if not local.exists():
        if _looks_local(path):
            raise ModelLoadError(f"model path not found: {path}")
        return path  # a hub id: from_pretrained resolves it
    index = local / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
    try:
        found = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{index}: unreadable model_index.json ({exc})") from None
    if expected_class and found != expected_class:
        fits = ADAPTER_FOR_PIPELINE.get(found)
        hint = f"model.type: {fits}" if fits else f"model.type: diffusers with pipeline_class: {found}"
        raise ModelLoadError(f"{path} holds a {found}, not a {expected_class}; for this folder use {hint}")
    return str(local)


def _pipeline_class(name: str | None):
    import diffusers

    if name is None:
        return diffusers.DiffusionPipeline
    cls = getattr(diffusers, name, None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, diffusers.DiffusionPipeline):
        raise ModelLoadError(f"diffusers {diffusers.__version__} has no pipeline class {name!r}")
    return cls


def prepare_pipeline(config: "ModelConfig", *, pipeline_class: str | None, tiny_family: str | None,
                     check_class: bool = True) -> None:
    """Everything before the weights: resolve (or build) the folder, check it, import the classes it names.

    Runs before the worker takes a model-load slot, so the seconds of Python
    imports overlap across workers and only weight loading is staggered.
    Cheap to repeat: `load_pipeline` goes through the same steps.
    """
    path = check_local_pipeline(resolve_path(config.path, tiny_family), pipeline_class if check_class else None)
    _import_custom_components()
    _pipeline_class(pipeline_class)
    index = Path(path) / "model_index.json"
    if index.is_file():
        import importlib

        for entry in json.loads(index.read_text(encoding="utf-8")).values():
            if isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry):
                try:
                    getattr(importlib.import_module(entry[0]), entry[1], None)
                except ImportError:
                    pass  # from_pretrained reports it with context


def load_pipeline(config: "ModelConfig", torch_device: str, *, pipeline_class: str | None, tiny_family: str | None,
                  check_class: bool = True):
    """Load, adapt and place the pipeline a ModelConfig describes; ModelLoadError on a bad path or class."""
    import torch

    path = resolve_path(config.path, tiny_family)
    path = check_local_pipeline(path, pipeline_class if check_class else None)
    _import_custom_components()
    cls = _pipeline_class(pipeline_class)
    kwargs = {_dtype_keyword(): resolve_dtype(config.dtype, torch_device), **config.load_kwargs}
    try:
        pipe = cls.from_pretrained(path, **kwargs)
    except Exception as exc:  # diffusers raises many types here; the worker needs one clear line
        raise ModelLoadError(f"cannot load {cls.__name__} from {path}: {type(exc).__name__}: {exc}") from exc
    if config.lora is not None:
        apply_lora(pipe, config.lora)
    place(pipe, config.offload, torch_device)
    denoiser = getattr(pipe, "transformer", None)
    if denoiser is None:
        denoiser = getattr(pipe, "unet", None)
    if config.attention_backend:
        set_attention_backend(denoiser, config.attention_backend)
    if config.compile and isinstance(denoiser, torch.nn.Module):
        denoiser.compile()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _dtype_keyword() -> str:
    """Newer diffusers take `dtype` and deprecate `torch_dtype`; older ones only know `torch_dtype`."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def _import_custom_components() -> None:
    # Saved tiny Qwen pipelines name this module in model_index.json.
    from .tiny import processor  # noqa: F401


def apply_lora(pipe, lora) -> None:
    if not hasattr(pipe, "load_lora_weights"):
        raise ModelLoadError(f"{type(pipe).__name__} does not take LoRA weights")
    try:
        pipe.load_lora_weights(lora.path, weight_name=lora.weight_name, adapter_name=LORA_ADAPTER_NAME)
        pipe.set_adapters([LORA_ADAPTER_NAME], adapter_weights=[lora.scale])
    except (OSError, ValueError, ImportError) as exc:
        raise ModelLoadError(f"cannot load LoRA {lora.path}: {exc}") from exc


def remove_lora(pipe) -> None:
    if getattr(pipe, "get_list_adapters", None) and any(pipe.get_list_adapters().values()):
        pipe.unload_lora_weights()


def place(pipe, offload: str, torch_device: str) -> None:
    if offload != "none" and not torch_device.startswith("cuda"):
        log.warning("offload=%s ignored on %s: the weights already live in CPU memory", offload, torch_device)
        offload = "none"
    if offload == "model":
        pipe.enable_model_cpu_offload(device=torch_device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=torch_device)
    else:
        pipe.to(torch_device)


def set_attention_backend(module, backend: str) -> None:
    if module is None or not hasattr(module, "set_attention_backend"):
        raise ModelLoadError(f"attention_backend {backend!r}: this diffusers version or model cannot switch backends")
    try:
        module.set_attention_backend(backend)
    except (ValueError, RuntimeError, ImportError) as exc:
        raise ModelLoadError(f"attention_backend {backend!r}: {exc}") from exc


# Call arguments the adapter sets itself, or that make no sense in a config.
_NOT_PARAMS = {"self", "prompt", "image", "generator", "output_type", "return_dict", "latents", "prompt_embeds"}


def check_call_params(pipe, params: dict[str, Any], *, strict: bool) -> None:
    """ModelLoadError for params the pipeline's __call__ does not take (named; with a did-you-mean).

    `pipe` is a pipeline or a pipeline class.
    Not strict: a pipeline whose __call__ takes **kwargs accepts anything.
    """
    import difflib
    import inspect

    cls = pipe if isinstance(pipe, type) else type(pipe)  # a class: checked before any weights load
    signature = inspect.signature(cls.__call__).parameters
    if not strict and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values()):
        return
    known = (set(signature) - _NOT_PARAMS) | {"size", "height", "width"}
    for key in params:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f" (it takes: {', '.join(sorted(known))})"
            raise ModelLoadError(f"model.params.{key}: {cls.__name__} has no such argument{hint}")


# ---------------------------------------------------------------- sizes


def round_down(value: float, multiple: int) -> int:
    return max(multiple, int(value) // multiple * multiple)


def size_policy(params: dict[str, Any]) -> str:
    """Pop and validate params["size"]; raise ValueError naming the bad value."""
    has_size = params.get("height") is not None and params.get("width") is not None
    policy = params.pop("size", None) or ("fixed" if has_size else "input")
    if policy not in SIZE_POLICIES:
        raise ValueError(f"params.size must be one of {', '.join(SIZE_POLICIES)} (got {policy!r})")
    if policy == "fixed" and not has_size:
        raise ValueError("params.size 'fixed' needs params.height and params.width")
    if (params.get("height") is None) != (params.get("width") is None):
        raise ValueError("give both params.height and params.width, or neither")
    return policy


# ---------------------------------------------------------------- the adapter base


class DiffusersEditModel(EditModel):
    """Base for adapters that run one diffusers pipeline per worker."""

    pipeline_class: ClassVar[str | None] = None  # the diffusers class name; None: whatever the folder holds
    tiny_family: ClassVar[str | None] = None  # which tiny pipeline ``path: tiny`` means
    latent_patch: ClassVar[int] = 2  # latents are packed in 2x2 patches (FLUX, Qwen); 1 for UNet models
    size_multiple: int = 16  # generated sides are multiples of this: VAE factor x latent_patch, set at load

    pipe: Any = None
    stoppable: bool = False  # the pipeline takes callback_on_step_end: a cancelled run stops mid-edit

    def prepare(self) -> None:
        prepare_pipeline(self.config, pipeline_class=self.pipeline_class, tiny_family=self.tiny_family)

    def unload(self) -> None:
        self.pipe = None

    def swap_lora(self, config: "ModelConfig") -> None:
        """Same base, another LoRA (or none): the base weights stay, only the adapter changes."""
        remove_lora(self.pipe)
        if config.lora is not None:
            apply_lora(self.pipe, config.lora)
        self.config = config

    def load(self) -> None:
        self.pipe = load_pipeline(
            self.config, self.torch_device, pipeline_class=self.pipeline_class, tiny_family=self.tiny_family
        )
        check_call_params(self.pipe, self.config.params, strict=True)
        self.stoppable = "callback_on_step_end" in inspect.signature(self.pipe.__call__).parameters
        self.size_multiple = getattr(self.pipe, "vae_scale_factor", 8) * self.latent_patch

    def generator(self, seed: int):
        import torch

        offloaded = self.config.offload != "none"
        device = "cpu" if offloaded or not self.torch_device.startswith("cuda") else self.torch_device
        return torch.Generator(device=device).manual_seed(seed)

    def check_request(self, request: EditRequest) -> None:
        if not request.images:
            raise ValueError(f"{self.name} needs an input image; item {request.item_id} has none")
        if len(request.images) > self.max_images:
            raise ValueError(
                f"{self.name} takes at most {self.max_images} input image(s); "
                f"item {request.item_id} has {len(request.images)}"
            )

    def call_kwargs(self, images: list["Image.Image"], params: dict[str, Any]) -> dict[str, Any]:
        """Family hook: all pipeline arguments but prompt and generator, from the images and params
        (params still hold height/width when given)."""
        raise NotImplementedError

    def requested_size(self, params: dict[str, Any]) -> tuple[int, int] | None:
        """Pop params height/width and round them down to `size_multiple`: (width, height), or None."""
        height, width = params.pop("height", None), params.pop("width", None)
        if height is None:
            return None
        return round_down(width, self.size_multiple), round_down(height, self.size_multiple)

    def edit(self, request: EditRequest) -> EditResult:
        import torch

        self.check_request(request)
        params = dict(request.params)
        policy = size_policy(params)
        images = [im.convert("RGB") for im in request.images]
        kwargs = self.call_kwargs(images, params)
        kwargs.update(prompt=request.instruction, generator=self.generator(request.seed), output_type="pil")
        if request.should_stop is not None and self.stoppable:
            kwargs["callback_on_step_end"] = _stop_between_steps(request.should_stop)
        with torch.inference_mode():
            result = self.pipe(**kwargs).images[0]
        generated = result.size
        input_size = images[0].size if images else None
        if policy == "input" and input_size and result.size != input_size:
            from PIL import Image

            result = result.resize(input_size, Image.Resampling.LANCZOS)
        info = {
            "input_size": list(input_size) if input_size else None,
            "generated_size": list(generated),
            "output_size": list(result.size),
            "size_policy": policy,
        }
        if len(images) > 1:
            info["input_sizes"] = [list(im.size) for im in images]
        return EditResult(image=result, info=info)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.pipe is not None:
            info["pipeline"] = type(self.pipe).__name__
        info["offload"] = self.config.offload
        return info


def _stop_between_steps(should_stop):
    """A callback_on_step_end that ends the pipeline call once the run is cancelled.

    Raising works for every pipeline, including those without an `_interrupt`
    flag (InstructPix2Pix), and leaves no half-denoised image to be saved.
    """

    def callback(pipe, step, timestep, callback_kwargs):
        if should_stop():
            raise EditCancelled(f"run cancelled at denoising step {step + 1}")
        return callback_kwargs

    return callback
