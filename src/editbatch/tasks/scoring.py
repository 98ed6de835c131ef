"""The scoring step: metrics of an edit computed by the worker that made it, before the attempt is written.

The scores go into the result, so they travel in the item's record (a
resume keeps them) and its manifest line. The scorer's models are loaded once
per worker (see `runtime.WorkerRuntime.item_scorer`); each score is cached
under its full key (scores/cache.py), so an item retried or resumed is not
scored twice. A scoring failure does not fail the edit: the item keeps its
image and records `scores.error`.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from PIL import Image

from ..imageio import load_rgb
from ..scores.cache import ScoreCache, file_digest
from ..scores.item import Texts, cached_score
from ..workers import runtime
from .contract import EditTask


def score_edit(task: EditTask, rt: "runtime.WorkerRuntime", output: Image.Image, result: dict[str, Any]) -> None:
    spec = task.evaluate
    if not spec or not spec.get("metrics"):
        return
    started = time.perf_counter()
    try:
        scorer = rt.item_scorer(spec)
        cache = None
        if spec.get("cache_dir"):
            rt.roots.check_output(Path(spec["cache_dir"]) / "x")
            cache = ScoreCache(spec["cache_dir"])
        if task.target:
            rt.roots.check_input(task.target)  # a payload cannot make the worker read a file outside its roots
        inputs = [load_rgb(p, rt.max_pixels) for p in task.images]
        target = load_rgb(task.target, rt.max_pixels) if task.target else None
        texts = Texts(task.instruction, **(task.texts or {}))
        scores = cached_score(scorer, cache, output, inputs, [file_digest(p) for p in task.images], target,
                              file_digest(task.target), texts)
    except Exception as exc:  # noqa: BLE001 - the edit stands; its scores say what went wrong
        scores = {"metrics": {}, "error": f"{exc.__class__.__name__}: {exc}",
                  "traceback": traceback.format_exc(limit=4)}
    scores["score_s"] = time.perf_counter() - started
    result["scores"] = scores
