"""Means with bootstrap 95% confidence intervals, per category, macro and micro.

Pure numpy, no model imports. Items whose score failed (a refusal, an answer
that did not parse) are counted in `failed` and left out of every mean.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

BOOTSTRAP_SEED = 0  # fixed: the same scores give the same intervals


def bootstrap_ci(values: Iterable[float], *, samples: int = 1000, seed: int = BOOTSTRAP_SEED) -> list[float] | None:
    """The 2.5th and 97.5th percentiles of the mean over `samples` resamples (None for fewer than 2 values)."""
    arr = np.asarray(list(values), dtype=float)
    if arr.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(samples, arr.size))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def summarise(values: list[float], failed: int, samples: int) -> dict[str, Any]:
    return {"n": len(values), "failed": failed, "mean": float(np.mean(values)) if values else None,
            "ci95": bootstrap_ci(values, samples=samples)}


def macro(groups: dict[str, list[float]], samples: int, seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """The mean of the category means; its interval resamples items within each category (stratified)."""
    kept = {k: np.asarray(v, dtype=float) for k, v in groups.items() if v}
    if not kept:
        return {"mean": None, "ci95": None, "categories": 0}
    mean = float(np.mean([v.mean() for v in kept.values()]))
    ci = None
    if all(v.size >= 2 for v in kept.values()):
        rng = np.random.default_rng(seed)
        per_group = [v[rng.integers(0, v.size, size=(samples, v.size))].mean(axis=1) for v in kept.values()]
        means = np.mean(per_group, axis=0)
        ci = [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
    return {"mean": mean, "ci95": ci, "categories": len(kept)}


def aggregate(rows: list[dict[str, Any]], names: list[str], *, samples: int = 1000) -> dict[str, Any]:
    """`rows`: one per item, {"category", "values": {name: float}}; a name without a value counts as failed.

    For each score name: `micro` (all items pooled), `macro` (mean of category means) and `by_category`.
    """
    out: dict[str, Any] = {}
    for name in names:
        groups: dict[str, list[float]] = {}
        failed: dict[str, int] = {}
        for row in rows:
            cat = str(row.get("category") or "all")
            value = (row.get("values") or {}).get(name)
            # No value: the judge failed on this item (its names only), or the metric had no reference.
            if value is None or (isinstance(value, float) and math.isnan(value)):
                failed[cat] = failed.get(cat, 0) + 1
                groups.setdefault(cat, [])
                continue
            groups.setdefault(cat, []).append(float(value))
        pooled = [v for vals in groups.values() for v in vals]
        out[name] = {
            "micro": summarise(pooled, sum(failed.values()), samples),
            "macro": macro(groups, samples),
            "by_category": {cat: summarise(vals, failed.get(cat, 0), samples) for cat, vals in sorted(groups.items())},
        }
    return out


def paired_difference(a: dict[str, float], b: dict[str, float], *, samples: int = 1000) -> dict[str, Any]:
    """Per-item differences b - a over the ids both runs scored, with a bootstrap interval."""
    common = sorted(set(a) & set(b))
    diffs = [b[i] - a[i] for i in common]
    result = summarise(diffs, 0, samples)
    ci = result["ci95"]
    result["better"] = None if ci is None else ("second" if ci[0] > 0 else "first" if ci[1] < 0 else None)
    return result
