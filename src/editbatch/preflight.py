"""Checks `editbatch validate` makes beyond the schema, still without loading any weights.

Each one catches at the desk what would otherwise fail on every worker after
minutes of loading: pipeline arguments the pipeline does not take, CUDA
devices on a machine without CUDA, a LoRA folder that is not there, or a
LoRA without `peft` installed. A failure is one ConfigError naming file and field.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .config import RunConfig
from .errors import ConfigError, ModelLoadError
from .models.registry import get_model_class


def check_params(config: RunConfig, source: str) -> None:
    model_cls = get_model_class(config.model.type)
    params = config.model.params
    known = getattr(model_cls, "known_params", None)
    if known is not None:
        import difflib

        for key in params:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else f" (it takes: {', '.join(sorted(known))})"
                raise ConfigError(source, f"model.params.{key}", f"{config.model.type} has no such parameter{hint}")
        return
    class_name = getattr(model_cls, "pipeline_class", None) or config.model.pipeline_class
    if not class_name:
        return  # `diffusers` without pipeline_class: the folder decides the class at load time
    # Importing diffusers pulls in transformers, whose import-time notices would bury the one-line answer.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from .models.diffusers_common import _pipeline_class, check_call_params

    try:
        check_call_params(_pipeline_class(class_name), params, strict=True)
    except ModelLoadError as exc:
        field, _, message = str(exc).partition(": ")
        raise ConfigError(source, field if message else "model.params", message or str(exc)) from None


def check_devices(config: RunConfig, source: str) -> None:
    """CUDA devices for workers this machine will start (broker: auto) need CUDA here."""
    if config.cluster.broker != "auto" or not any(d.kind == "cuda" for d in config.devices):
        return
    import torch

    if not torch.cuda.is_available():
        wanted = ", ".join(str(d) for d in config.cluster.devices)
        raise ConfigError(source, "cluster.devices", f"CUDA devices [{wanted}] asked for, but torch sees no CUDA "
                                                     "on this machine (use [cpu, ...] or run where the GPUs are)")


def check_lora(config: RunConfig, source: str) -> None:
    lora = config.model.lora
    if lora is None:
        return
    from .models.diffusers_common import _looks_local

    if _looks_local(lora.path) and not Path(lora.path).expanduser().exists():
        raise ConfigError(source, "model.lora.path", f"LoRA not found: {lora.path}")
    if importlib.util.find_spec("peft") is None:
        raise ConfigError(source, "model.lora", "a LoRA needs peft, which is not installed "
                                                "(pip install 'editbatch[lora]')")


def preflight(config: RunConfig, source: str) -> None:
    check_params(config, source)
    check_devices(config, source)
    check_lora(config, source)
