"""`report.html`: a static page over one or more run folders (header figures, timelines, gallery).

One HTML file with relative links and no network access: it opens from a
file browser, a static server, or a copy made together with the run folders.
Several runs over the same dataset are compared item by item (matched by id).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape

from .. import layout
from ..counts import count
from . import scores as score_view
from .run_folder import RunFolder, read_run_folder
from .thumbnails import make_thumbnails
from .timeline import build_timeline, svg_geometry, write_timeline_png

@dataclass
class ReportResult:
    html: Path
    pngs: list[Path]
    items: int
    seconds: float


def _link(target: Path, page_dir: Path) -> str:
    return quote(os.path.relpath(target, page_dir).replace(os.sep, "/"))


def _fmt(value: Any, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


# What makes two runs' outputs differ, as (label, where it is in config.resolved.yaml).
COMPARED = (("model type", ("model", "type")), ("model path", ("model", "path")), ("dtype", ("model", "dtype")),
            ("LoRA", ("model", "lora")), ("params", ("model", "params")), ("seed", ("schedule", "seed")),
            ("mode", ("schedule", "mode")))


def _setting(run: RunFolder, where: tuple[str, str]) -> Any:
    value = (run.config.get(where[0]) or {}).get(where[1])
    return value if value not in ({}, []) else None


def differences(runs: list[RunFolder]) -> list[str]:
    """The settings (of COMPARED) whose values are not the same in every run."""
    return [label for label, where in COMPARED
            if len({json.dumps(_setting(r, where), sort_keys=True, default=str) for r in runs}) > 1]


def header_figures(run: RunFolder, differing: list[str] = ()) -> list[tuple[str, str]]:
    s, model = run.summary, run.config.get("model") or {}
    lora = model.get("lora") or {}
    model_text = " ".join(p for p in (model.get("type") or (s.get("model") or {}).get("type"),
                                      model.get("path") or (s.get("model") or {}).get("path"),
                                      model.get("dtype")) if p)
    overhead = s.get("overhead")
    covers = s.get("covers") or {}
    timing_note = (f" (this {covers['kind']}: {covers['items_run']} of {covers['items']} items)"
                   if covers.get("kind") in ("resume", "retry") else "")
    where = dict(COMPARED)
    figures = [
        ("run", run.label),
        ("model", model_text or "-"),
        ("LoRA", f"{lora['path']} (scale {lora.get('scale', 1.0):g})" if lora.get("path") else "none"),
        ("mode", run.mode or "-"),
        ("items", f"{len(run.manifest) or s.get('items', 0)}: {count(run.manifest).text()}"),
        ("makespan", _fmt(s.get("makespan_s"), " s") + timing_note),
        ("efficiency", _fmt(s.get("efficiency"), "", 3) if s.get("efficiency") is not None else "n/a"),
        ("overhead vs ideal", f"{overhead * 100:+.1f}% (ideal {_fmt(s.get('ideal_s'), ' s')})"
                              if overhead is not None else "n/a"),
        ("barrier idle", _fmt(s.get("barrier_idle_s"), " s") if s.get("barrier_idle_s") is not None else "-"),
        ("devices", ", ".join(run.devices) or "-"),
    ]
    if s.get("runs") and len(s["runs"]) > 1:
        figures.append(("runs of this folder", "; ".join(
            f"{r.get('kind')} {r.get('run_id')}: {r.get('items_run')} items in {_fmt(r.get('makespan_s'), ' s')}"
            for r in s["runs"])))
    if differing:
        figures.append(("differs", ", ".join(
            f"{label} {json.dumps(_setting(run, where[label]), default=str)}" for label in differing)))
    return figures


def _seconds(record: dict[str, Any]) -> float | None:
    if record.get("started_at") is None or record.get("finished_at") is None:
        return None
    return record["finished_at"] - record["started_at"]


def build_rows(runs: list[RunFolder], thumbs: dict[Path, Path], page_dir: Path) -> list[dict[str, Any]]:
    """One row per item id across the runs, in the first run's order; a cell per run (None where absent)."""
    order: dict[str, dict[str, Any]] = {}
    for k, run in enumerate(runs):
        for record in run.manifest:
            row = order.setdefault(record["id"], {"id": record["id"], "cells": [None] * len(runs),
                                                  "record": record})
            row["cells"][k] = record
    rows = []
    for n, row in enumerate(order.values()):
        first = row["record"]
        run_of_first = runs[next(k for k, c in enumerate(row["cells"]) if c is not None)]
        inputs = []
        for name in first.get("inputs") or []:
            source = run_of_first.input_path(name)
            thumb = thumbs.get(source)
            inputs.append({"full": _link(source, page_dir) if thumb or source.exists() else None,
                           "thumb": _link(thumb, page_dir) if thumb else None, "name": Path(name).name})
        cells = []
        for run, record in zip(runs, row["cells"]):
            if record is None:
                cells.append(None)
                continue
            output = run.path / record["output"] if record.get("output") else None
            thumb = thumbs.get(output) if output else None
            cells.append({"status": record.get("status") or "unknown", "seconds": _seconds(record),
                          "device": record.get("device"), "error": record.get("error"),
                          "full": _link(output, page_dir) if output and output.exists() else None,
                          "thumb": _link(thumb, page_dir) if thumb else None})
        statuses = sorted({c["status"] for c in cells if c} | ({"missing"} if None in cells else set()))
        rows.append({"key": f"item-{n}", "id": row["id"], "category": first.get("category") or "uncategorised",
                     "instruction": first.get("instruction") or "", "inputs": inputs, "cells": cells,
                     "statuses": statuses, "partial": None in cells})
    return rows


def _thumbnail_sources(runs: list[RunFolder]) -> dict[Path, Path]:
    """source image -> the run folder its thumbnail goes in (inputs: the first run naming them)."""
    wanted: dict[Path, Path] = {}
    for run in runs:
        for record in run.manifest:
            for name in record.get("inputs") or []:
                wanted.setdefault(run.input_path(name), run.path)
            if record.get("output"):
                wanted.setdefault(run.path / record["output"], run.path)
    return wanted


def write_report(run_dirs: list[str | Path], output: str | Path | None = None) -> ReportResult:
    """Write the report of `run_dirs` (default `<first run>/report.html`) and each run's timeline.png."""
    began = time.perf_counter()
    runs = [read_run_folder(d) for d in run_dirs]
    html = Path(output) if output else runs[0].path / layout.REPORT
    page_dir = html.resolve().parent

    by_run: dict[Path, list[Path]] = {}
    for source, run_dir in _thumbnail_sources(runs).items():
        by_run.setdefault(run_dir, []).append(source)
    thumbs: dict[Path, Path] = {}
    for run_dir, sources in by_run.items():
        thumbs.update(make_thumbnails(sources, run_dir))

    headers, pngs = [], []
    differing = differences(runs) if len(runs) > 1 else []
    timelines = [build_timeline(run) for run in runs]
    longest = max(t.span for t in timelines)
    for k, (run, timeline) in enumerate(zip(runs, timelines)):
        png = run.path / layout.TIMELINE
        write_timeline_png(timeline, png, title=f"{run.label}, {run.mode}")
        pngs.append(png)
        index_to_key = {}
        headers.append({"name": run.name, "label": run.label, "folder": _link(run.path, page_dir),
                        "figures": header_figures(run, differing),
                        "timeline": svg_geometry(timeline, span=longest), "timeline_png": _link(png, page_dir),
                        "index_to_key": index_to_key, "column": k})
    rows = build_rows(runs, thumbs, page_dir)
    scored = score_view.build(runs, page_dir, _link)
    if scored is not None:
        for row in rows:  # each output's scores and the judge's reason, under it
            for k, cell in enumerate(row["cells"]):
                if cell is not None:
                    cell["scores"] = score_view.item_cell(scored["per_run"][k].get(row["id"]), scored["names"])
            first = next((c["scores"] for c in row["cells"] if c and c.get("scores")), None)
            row["rank"] = first["rank"] if first and first["rank"] is not None else ""
    for k, run in enumerate(runs):
        ids = {r["id"]: r["key"] for r in rows}
        headers[k]["index_to_key"].update({rec["index"]: ids[rec["id"]] for rec in run.manifest})

    categories: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        categories.setdefault(row["category"], []).append(row)
    problems = [{"run": run.label, "row": row, "cell": row["cells"][k]} for k, run in enumerate(runs) for row in rows
                if row["cells"][k] and row["cells"][k]["status"] != "ok"]
    env = Environment(loader=PackageLoader("editbatch.report", "templates"), autoescape=select_autoescape(),
                      trim_blocks=True, lstrip_blocks=True)
    text = env.get_template("report.html.j2").render(
        title=" vs ".join(r.label for r in runs), runs=headers, scored=scored, categories=sorted(categories.items()),
        statuses=sorted({s for row in rows for s in row["statuses"]}), problems=problems,
        partial=sum(1 for r in rows if r["partial"]), items=len(rows),
        generated=time.strftime("%Y-%m-%d %H:%M:%S"))
    html.parent.mkdir(parents=True, exist_ok=True)
    tmp = html.with_name(html.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, html)  # a reader never sees half a page
    return ReportResult(html, pngs, len(rows), time.perf_counter() - began)
