"""What a loaded model is, for every place that must tell two models apart.

A worker advertises the identity of the model it holds (presence record),
the producer and the coordinator ask for one (readiness, model switches),
and every task carries one (the worker refuses to edit with another model).
The identity holds every load-time setting that changes outputs; call
parameters (`model.params`) are not in it, as they travel with each task.

The shared queue of a model is named after its identity, so workers that
hold different models on one broker never take each other's items.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import ModelConfig

# Load-time fields of ModelConfig that change what a worker computes.
FIELDS = ("type", "path", "dtype", "lora", "offload", "compile", "attention_backend", "pipeline_class",
          "load_kwargs")
SHARED_QUEUE_PREFIX = "shared-"


def model_identity(model: "ModelConfig") -> dict[str, Any]:
    data = model.model_dump(mode="json")
    return {key: data.get(key) for key in FIELDS}


def identity_hash(identity: dict[str, Any]) -> str:
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(canonical.encode()).hexdigest()[:12]


def shared_queue(identity: dict[str, Any]) -> str:
    """The queue every worker holding this model consumes besides its own device queue."""
    return SHARED_QUEUE_PREFIX + identity_hash(identity)


def same_base(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True when only the LoRA differs: the base weights can stay loaded."""
    return {k: v for k, v in a.items() if k != "lora"} == {k: v for k, v in b.items() if k != "lora"}


def matches(wanted: dict[str, Any] | None, loaded: dict[str, Any] | None) -> bool:
    """Whether a worker holding `loaded` may serve a task asking for `wanted`.

    A task may name only some fields (the v1 contract showed type and path);
    the fields it names must all agree.
    """
    if not wanted:
        return True
    loaded = loaded or {}
    return all(loaded.get(key) == value for key, value in wanted.items() if key in FIELDS)


def difference(wanted: dict[str, Any], loaded: dict[str, Any] | None) -> str:
    """`dtype float32 != bfloat16, lora ...`: the fields that differ, for error messages."""
    loaded = loaded or {}
    parts = [f"{key} {_short(loaded.get(key))} != {_short(value)}"
             for key, value in wanted.items() if key in FIELDS and loaded.get(key) != value]
    return ", ".join(parts) or "no difference"


def describe(identity: dict[str, Any] | None) -> str:
    identity = identity or {}
    text = f"{identity.get('type')} ({identity.get('path')}"
    if identity.get("dtype") not in (None, "auto"):
        text += f", {identity['dtype']}"
    if identity.get("lora"):
        text += f", LoRA {identity['lora'].get('path')} x{identity['lora'].get('scale')}"
    return text + ")"


def _short(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
