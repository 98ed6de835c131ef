"""Model adapters by name, imported only when chosen (torch and diffusers are heavy)."""

from __future__ import annotations

import importlib

# name -> "module:Class"; the module is imported on first use.
MODELS: dict[str, str] = {
    "simulated": "editbatch.models.simulated:SimulatedModel",
    "instruct_pix2pix": "editbatch.models.instruct_pix2pix:InstructPix2PixModel",
    "qwen_image_edit": "editbatch.models.qwen_image_edit:QwenImageEditModel",
    "qwen_image_edit_plus": "editbatch.models.qwen_image_edit:QwenImageEditPlusModel",
    "flux_kontext": "editbatch.models.flux_kontext:FluxKontextModel",
    "diffusers": "editbatch.models.generic:DiffusersModel",
}

# Names other projects use for the same adapter.
ALIASES: dict[str, str] = {
    "multi_gpu_qwen_image_edit": "qwen_image_edit",
    "qwen_image_edit_2509": "qwen_image_edit_plus",
    "qwen_image_edit_2511": "qwen_image_edit_plus",
    "flux_kontext_dev": "flux_kontext",
    "pix2pix": "instruct_pix2pix",
}


def model_names() -> list[str]:
    return sorted(MODELS)


def canonical_name(name: str) -> str | None:
    name = ALIASES.get(name, name)
    return name if name in MODELS else None


def get_model_class(name: str):
    """Import and return the adapter class registered as `name` (or an alias)."""
    canonical = canonical_name(name)
    if canonical is None:
        raise KeyError(f"unknown model type {name!r}")
    module_name, _, class_name = MODELS[canonical].partition(":")
    return getattr(importlib.import_module(module_name), class_name)
