"""A model that only takes time: for testing and benchmarking schedules without GPUs.

Each edit sleeps ``seconds x device_speed[slot] x U(1 - jitter, 1 + jitter)``
(the jitter drawn from the item's seed, so it is the same whichever worker
runs the item) and writes a tiny image whose colour comes from the seed.
``fail_ids`` lists item ids whose edit raises, to rehearse failures.
"""

from __future__ import annotations

import random
import time

from PIL import Image

from .base import EditModel, EditRequest, EditResult


class SimulatedModel(EditModel):
    name = "simulated"
    reads_images = False
    # Every params key edit() and load() read; `editbatch validate` refuses others.
    known_params = frozenset({"seconds", "jitter", "device_speed", "fail_ids", "size", "load_seconds"})

    def load(self) -> None:
        params = self.config.params
        time.sleep(float(params.get("load_seconds", 0.0)))

    def edit(self, request: EditRequest) -> EditResult:
        params = request.params
        if request.item_id in set(params.get("fail_ids") or ()):
            raise RuntimeError(f"simulated failure for item {request.item_id!r}")
        speeds = params.get("device_speed") or []
        factor = float(speeds[self.slot]) if self.slot < len(speeds) else 1.0
        jitter = float(params.get("jitter", 0.0))
        work = float(params.get("seconds", 0.0)) * random.Random(request.seed).uniform(1 - jitter, 1 + jitter)
        if work * factor > 0:
            time.sleep(work * factor)
        colour = tuple(request.seed >> shift & 0xFF for shift in (0, 8, 16))
        size = int(params.get("size", 16))
        return EditResult(Image.new("RGB", (size, size), colour),
                          {"work_s": work, "output_size": [size, size], "size_policy": "fixed"})
