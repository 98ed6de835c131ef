"""A model that only takes time: for testing and benchmarking schedules without GPUs.

Each edit sleeps ``seconds x device_speed[slot] x U(1 - jitter, 1 + jitter)``
(the jitter drawn from the item's seed, so it is the same whichever worker
runs the item) and writes a tiny image whose colour comes from the seed.
``fail_ids`` lists item ids whose edit raises, to rehearse failures.
``call_log`` names a file that gets one JSON line per model call (item id,
seed, pid, start time), so tests can count what was computed, and when.
``fail_first: {id: n}`` makes the first n calls of an item raise (counted in
``call_log``): a transient fault for retries. ``crash_ids`` lists items
that kill their worker process outright: a poison item.
``sticky_fail_after: k`` (or ``{device: k}``) makes every call after this
process's k-th raise a CUDA-style error, like a GPU whose context broke (a
fresh process is fine again).
"""

from __future__ import annotations

import json
import os
import random
import time

from PIL import Image

from .base import EditCancelled, EditModel, EditRequest, EditResult


class SimulatedModel(EditModel):
    name = "simulated"
    reads_images = False
    # Every params key edit() and load() read; `editbatch validate` refuses others.
    known_params = frozenset({"seconds", "jitter", "device_speed", "fail_ids", "size", "load_seconds", "call_log",
                              "fail_first", "crash_ids", "sticky_fail_after"})

    def load(self) -> None:
        params = self.config.params
        time.sleep(float(params.get("load_seconds", 0.0)))

    def edit(self, request: EditRequest) -> EditResult:
        params = request.params
        if params.get("call_log"):
            earlier = _log_call(params["call_log"], request, self.device.queue)
            if earlier < int((params.get("fail_first") or {}).get(request.item_id, 0)):
                raise RuntimeError(f"simulated transient failure {earlier + 1} for item {request.item_id!r}")
        self.calls = getattr(self, "calls", 0) + 1
        sticky = params.get("sticky_fail_after")
        if isinstance(sticky, dict):
            sticky = sticky.get(self.device.queue)
        if sticky is not None and self.calls > int(sticky):
            raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")
        if request.item_id in set(params.get("crash_ids") or ()):
            os._exit(70)  # like a segfault or an OOM kill: no cleanup, no result
        if request.item_id in set(params.get("fail_ids") or ()):
            raise RuntimeError(f"simulated failure for item {request.item_id!r}")
        speeds = params.get("device_speed") or []
        factor = float(speeds[self.slot]) if self.slot < len(speeds) else 1.0
        jitter = float(params.get("jitter", 0.0))
        work = float(params.get("seconds", 0.0)) * random.Random(request.seed).uniform(1 - jitter, 1 + jitter)
        _sleep(work * factor, request.should_stop)
        colour = tuple(request.seed >> shift & 0xFF for shift in (0, 8, 16))
        size = int(params.get("size", 16))
        return EditResult(Image.new("RGB", (size, size), colour),
                          {"work_s": work, "output_size": [size, size], "size_policy": "fixed"})


def _sleep(seconds: float, should_stop) -> None:
    """Sleep in steps, like a pipeline's denoising loop, stopping when the run is cancelled."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if should_stop is not None and should_stop():
            raise EditCancelled("run cancelled during the edit")
        time.sleep(min(left, 0.1))


def _log_call(path: str, request: EditRequest, device: str) -> int:
    """Append this call; return how many calls of the same item came before it."""
    try:
        with open(path, encoding="utf-8") as fh:
            earlier = sum(1 for line in fh if json.loads(line)["id"] == request.item_id)
    except FileNotFoundError:
        earlier = 0
    line = json.dumps({"id": request.item_id, "seed": request.seed, "device": device, "pid": os.getpid(),
                       "t": time.time()}) + "\n"
    # One short O_APPEND write per call: lines from several workers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return earlier
