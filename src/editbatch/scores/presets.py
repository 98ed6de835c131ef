"""Presets: what a published benchmark scores, the judge's answer schema, and how items aggregate.

A preset names the worker-side metrics it needs, the keys (and range) the
judge must answer with, how one answer becomes the item's values, which
value is the headline and whether the headline is a macro mean (mean per
category, then over categories) or a micro mean. The prompt text is a
template file (`evaluate.judge.template`, default: the one shipped in
templates/ under the preset's name).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

Values = dict[str, float]


@dataclass(frozen=True)
class Preset:
    name: str
    reproduces: str
    metrics: tuple[str, ...] = ()  # worker-side metrics (see item.py)
    answer: dict[str, tuple[float, float]] = field(default_factory=dict)  # judge answer key -> (low, high)
    item_values: Callable[[dict[str, float]], Values] | None = None  # judge answer -> the item's values
    headline: str = ""
    average: str = "macro"  # "macro": per category then over categories; "micro": over items
    group_by: str = "category"

    @property
    def uses_judge(self) -> bool:
        return bool(self.answer)


def _gedit(a: dict[str, float]) -> Values:
    sc = min(a["edit_done"], a["not_over_edited"])
    pq = min(a["naturalness"], a["no_artifacts"])
    return {"SC": sc, "PQ": pq, "O": math.sqrt(sc * pq)}


def _imgedit(a: dict[str, float]) -> Values:
    parts = {k: a[k] for k in ("instruction", "quality", "preservation")}
    return {**parts, "overall": sum(parts.values()) / 3}


def _kris(a: dict[str, float]) -> Values:
    vals = {k: (a[k] - 1) * 25 for k in ("consistency", "quality", "instruction")}
    return {**vals, "overall": sum(vals.values()) / 3}


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("gedit", "GEdit-Bench: SC = min(edit done, not over-edited), PQ = min(naturalness, no artifacts), 0-10; "
           "O = sqrt(SC x PQ); mean per task type, then over types",
           answer={"edit_done": (0, 10), "not_over_edited": (0, 10), "naturalness": (0, 10),
                   "no_artifacts": (0, 10)},
           item_values=_gedit, headline="O", average="macro", group_by="task_type"),
    Preset("imgedit", "ImgEdit: three 1-5 sub-scores, item mean, mean per edit type",
           answer={"instruction": (1, 5), "quality": (1, 5), "preservation": (1, 5)},
           item_values=_imgedit, headline="overall", average="macro", group_by="edit_type"),
    Preset("kris", "KRIS-Bench: consistency, quality, instruction following 1-5 rescaled (s-1) x 25, per category "
           "and overall (over items)",
           answer={"consistency": (1, 5), "quality": (1, 5), "instruction": (1, 5)},
           item_values=_kris, headline="overall", average="micro", group_by="category"),
    Preset("magicbrush", "MagicBrush: L1, L2, CLIP-I, DINO against the target, CLIP-T against the target caption",
           metrics=("l1_target", "l2_target", "clip_i_target", "dino_target", "clip_t"),
           headline="l1_target", average="micro"),
    Preset("emu", "Emu Edit: CLIP direction, CLIP-I, CLIP-T (output caption), L1 and DINO against the input",
           metrics=("clip_dir", "clip_i_input", "clip_t", "l1_input", "dino_input"),
           headline="clip_dir", average="micro"),
)}


LOWER_IS_BETTER = frozenset({"l1_input", "l2_input", "l1_target", "l2_target"})  # distances; the rest are similarities


def get_preset(name: str) -> Preset:
    return PRESETS[name]


def parse_answer(preset: Preset, text: str) -> tuple[dict[str, float], str]:
    """The judge's JSON answer as numbers in range, and its reason; ValueError naming what is wrong.

    Never guesses: a missing key, a number out of range or text that is not a JSON object is an error.
    """
    import json

    body = text.strip()
    if body.startswith("```"):  # a fenced block is still the answer; anything else around it is not
        body = body.strip("`").removeprefix("json").strip()
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    scores: dict[str, float] = {}
    for key, (low, high) in preset.answer.items():
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key!r} missing or not a number")
        if not low <= value <= high:
            raise ValueError(f"{key!r} = {value} outside {low}-{high}")
        scores[key] = float(value)
    reason = data.get("reason")
    return scores, reason if isinstance(reason, str) else ""


def values_of(preset: Preset | None, scores: dict[str, Any]) -> tuple[Values, bool]:
    """An item's numeric values from its stored scores, and whether its judge part failed."""
    values: Values = {k: v for k, v in (scores.get("metrics") or {}).items() if isinstance(v, (int, float))}
    judge = scores.get("judge")
    failed = False
    if preset is not None and preset.uses_judge:
        if not judge or judge.get("status") != "ok":
            failed = True
        else:
            values.update(preset.item_values(judge["scores"]))
    return values, failed


def value_names(preset: Preset | None, metrics: list[str]) -> list[str]:
    names = list(metrics)
    if preset is not None and preset.uses_judge:
        sample = {k: hi for k, (lo, hi) in preset.answer.items()}
        names += list(preset.item_values(sample))
    return list(dict.fromkeys(names))
