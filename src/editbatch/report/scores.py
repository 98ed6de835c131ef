"""The report's scores: a table and a chart per category (one colour per run, 95% intervals), each item's
scores and the judge's reason in the gallery, and for several runs paired per-item differences."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import layout
from ..scores import stats
from ..scores.presets import LOWER_IS_BETTER

MAX_CHARTED = 4  # score names in the chart (the headline first)


def read_scores(folder: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """scores.json and the per-item lines of scores.jsonl (by id); empty when the run was not scored."""
    try:
        summary = json.loads((folder / layout.SCORES).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}, {}
    items: dict[str, dict[str, Any]] = {}
    path = folder / layout.SCORES_ITEMS
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            items[row["id"]] = row
    return summary, items


def score_names(summary: dict[str, Any]) -> list[str]:
    names = list(summary.get("scores") or {})
    head = summary.get("headline")
    return ([head] if head in names else []) + [n for n in names if n != head]


def item_cell(row: dict[str, Any] | None, names: list[str]) -> dict[str, Any] | None:
    """What the gallery shows under an output: its values, the judge's status and reason."""
    if row is None:
        return None
    judge = (row.get("scores") or {}).get("judge") or {}
    values = row.get("values") or {}
    return {"values": [(n, values[n]) for n in names if n in values], "judge_status": judge.get("status"),
            "reason": judge.get("reason") or judge.get("error") or "", "rank": rank(names, values)}


def rank(names: list[str], values: dict[str, float]) -> float | None:
    """A number where smaller is worse, for sorting worst first (distances are turned around)."""
    for name in names[:1]:
        if name in values:
            return -values[name] if name in LOWER_IS_BETTER else values[name]
    return None


def table(labels: list[str], summaries: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Rows of (score, category) with one cell per run: mean, interval, n, failed."""
    rows = []
    for name in names:
        cats = sorted({c for s in summaries for c in ((s.get("scores") or {}).get(name) or {}).get("by_category", {})})
        for cat in ["micro (all items)", "macro (mean of categories)"] + cats:
            cells = []
            for s in summaries:
                agg = (s.get("scores") or {}).get(name) or {}
                if cat.startswith("micro"):
                    cell = agg.get("micro")
                elif cat.startswith("macro"):
                    cell = agg.get("macro")
                else:
                    cell = (agg.get("by_category") or {}).get(cat)
                cells.append(cell)
            rows.append({"score": name, "category": cat, "cells": cells})
    return rows


def paired(labels: list[str], per_run: list[dict[str, dict[str, Any]]], names: list[str],
           samples: int = 1000) -> list[dict[str, Any]]:
    """Each later run against the first: per score and category, the mean per-item difference with its interval."""
    out = []
    for k in range(1, len(per_run)):
        for name in names:
            by_cat: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
            for item_id, row in per_run[0].items():
                other = per_run[k].get(item_id)
                if other is None or name not in (row.get("values") or {}) or name not in (other.get("values") or {}):
                    continue
                for cat in ("all", row.get("category") or "all"):
                    a, b = by_cat.setdefault(cat, ({}, {}))
                    a[item_id], b[item_id] = row["values"][name], other["values"][name]
            for cat, (a, b) in sorted(by_cat.items()):
                diff = stats.paired_difference(a, b, samples=samples)
                better = diff["better"]
                if better is not None and name in LOWER_IS_BETTER:
                    better = "first" if better == "second" else "second"
                out.append({"score": name, "category": cat, "first": labels[0], "second": labels[k], **diff,
                            "better_run": {"first": labels[0], "second": labels[k]}.get(better)})
    return out


def write_chart(path: Path, labels: list[str], summaries: list[dict[str, Any]], names: list[str]) -> None:
    """Bars per category, one colour per run, whiskers at the 95% interval: one panel per score."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = names[:MAX_CHARTED]
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.6 * len(names)), dpi=100, squeeze=False)
    try:
        for ax, name in zip(axes[:, 0], names):
            cats = sorted({c for s in summaries for c in ((s.get("scores") or {}).get(name) or {})
                          .get("by_category", {})})
            width = 0.8 / max(1, len(summaries))
            for k, (label, s) in enumerate(zip(labels, summaries)):
                by_cat = ((s.get("scores") or {}).get(name) or {}).get("by_category", {})
                xs, means, low, high = [], [], [], []
                for i, cat in enumerate(cats):
                    cell = by_cat.get(cat) or {}
                    if cell.get("mean") is None:
                        continue
                    ci = cell.get("ci95") or [cell["mean"], cell["mean"]]
                    xs.append(i + k * width)
                    means.append(cell["mean"])
                    low.append(cell["mean"] - ci[0])
                    high.append(ci[1] - cell["mean"])
                ax.bar(xs, means, width, yerr=[low, high], capsize=3, label=label, color=f"C{k}")
            ax.set_xticks([i + width * (len(summaries) - 1) / 2 for i in range(len(cats))], cats, fontsize=8)
            ax.set_title(name + (" (lower is better)" if name in LOWER_IS_BETTER else ""), fontsize=9)
        axes[0, 0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def build(runs, page_dir: Path, link) -> dict[str, Any] | None:
    """Everything the page shows about scores; None when no run was scored."""
    read = [read_scores(r.path) for r in runs]
    if not any(s for s, _ in read):
        return None
    summaries = [s for s, _ in read]
    per_run = [items for _, items in read]
    labels = [r.label for r in runs]
    names = list(dict.fromkeys(n for s in summaries for n in score_names(s)))
    png = runs[0].path / layout.SCORES_PNG
    write_chart(png, labels, summaries, names)
    return {"names": names, "labels": labels, "table": table(labels, summaries, names), "png": link(png, page_dir),
            "paired": paired(labels, per_run, names) if len(runs) > 1 else [], "per_run": per_run,
            "judges": [s.get("judge") for s in summaries], "presets": [s.get("preset") for s in summaries],
            "failed": [s.get("failed") or {} for s in summaries]}
