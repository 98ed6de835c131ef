"""The adapter contract every model family implements.

A worker builds one adapter for its device, calls `load()` once at start-up
and then `edit()` once per item. Adapters never see Celery, Redis or paths:
the task layer decodes images and writes outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

if TYPE_CHECKING:
    from PIL import Image

    from ..config import ModelConfig
    from ..devices import Device


@dataclass
class EditRequest:
    item_id: str
    images: list["Image.Image"]  # RGB, EXIF orientation applied; empty when the adapter reads none
    instruction: str
    seed: int
    params: dict[str, Any] = field(default_factory=dict)  # model.params, already merged
    # True once the item's run is cancelled: adapters that can stop mid-edit check it between steps.
    should_stop: Callable[[], bool] | None = None


class EditCancelled(RuntimeError):
    """The run was cancelled while this item was being edited; no output is written."""


@dataclass
class EditResult:
    image: "Image.Image"
    # Recorded in the manifest: input/output sizes, the size policy applied, anything else useful.
    info: dict[str, Any] = field(default_factory=dict)


class EditModel:
    """Base class for adapters. Subclasses set `name` and implement `load` and `edit`."""

    name: ClassVar[str] = ""
    reads_images: ClassVar[bool] = True  # False: the task layer skips decoding inputs
    max_images: ClassVar[int] = 1  # input images one item may carry
    slot: int = 0  # position of this worker's device in cluster.devices

    def __init__(self, config: "ModelConfig", device: "Device", *, torch_device: str | None = None):
        self.config = config
        self.device = device
        # Inside a worker CUDA_VISIBLE_DEVICES exposes only its GPU, so it is always cuda:0.
        self.torch_device = torch_device or ("cuda:0" if device.kind == "cuda" else "cpu")

    def prepare(self) -> None:
        """Work before the weights (imports, resolving or building the model folder).

        Runs before the worker takes a model-load slot, so it overlaps across
        workers; only `load` is staggered by `cluster.load_concurrency`.
        """

    def load(self) -> None:
        """Load weights onto the device. Called once per worker, before any task."""
        raise NotImplementedError

    def edit(self, request: EditRequest) -> EditResult:
        raise NotImplementedError

    def unload(self) -> None:
        """Drop the weights before another model is loaded on this device (a model switch)."""

    def describe(self) -> dict[str, Any]:
        """What the worker advertises in its readiness record."""
        return {"type": self.name, "path": self.config.path, "dtype": self.config.dtype}
