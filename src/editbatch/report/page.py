"""`report.html`: a static page over one or more run folders (header figures, timelines, gallery).

One HTML file and its gallery's chunks (see gallery.py) with relative links and
no network access: it opens from a file browser, a static server, or a copy
made together with the run folders. Several runs over the same dataset are
compared item by item (matched by id).
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
from ..counts import Counts, Tally
from ..scheduling.metrics import Ratios
from . import scores as score_view
from .gallery import CHUNK, PAGE, GalleryWriter, items_dir, matched
from .run_folder import RunFolder, read_run_folder
from .thumbnails import THUMBS, make_thumbnails, thumbnail_name, thumbnail_path
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


def header_figures(run: RunFolder, tally: Counts, differing: list[str] = ()) -> list[tuple[str, str]]:
    s, model = run.summary, run.config.get("model") or {}
    lora = model.get("lora") or {}
    model_text = " ".join(p for p in (model.get("type") or (s.get("model") or {}).get("type"),
                                      model.get("path") or (s.get("model") or {}).get("path"),
                                      model.get("dtype")) if p)
    overhead, ratios = s.get("overhead"), Ratios.of(s)
    covers = s.get("covers") or {}
    timing_note = (f" (this {covers['kind']}: {covers['items_run']} of {covers['items']} items)"
                   if covers.get("kind") in ("resume", "retry") else "")
    where = dict(COMPARED)
    figures = [
        ("run", run.label),
        ("model", model_text or "-"),
        ("LoRA", f"{lora['path']} (scale {lora.get('scale', 1.0):g})" if lora.get("path") else "none"),
        ("mode", run.mode or "-"),
        ("items", f"{tally.total or s.get('items', 0)}: {tally.text()}"),
        ("makespan", _fmt(s.get("makespan_s"), " s") + timing_note),
        ("efficiency", ratios.shown("efficiency", _fmt(s.get("efficiency"), "", 3))),
        ("overhead vs ideal", ratios.shown("overhead", f"{overhead * 100:+.1f}% (ideal {_fmt(s.get('ideal_s'), ' s')})"
                                           if overhead is not None else None)),
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


class Thumbs:
    """The thumbnails of every input and output, made where missing or stale, a batch at a time."""

    BATCH = 1000

    def __init__(self, runs: list[RunFolder]):
        self.home: dict[Path, Path] = {}  # input -> the run folder holding its thumbnail (the first naming it)
        self.unreadable: set[Path] = set()  # sources with no thumbnail (missing, not an image)
        self.prefixes: dict[Path, str] = {}  # run folder -> its link from the page, ending in /
        self.inputs: dict[Path, tuple[str | None, str | None]] = {}  # input -> its links
        pending: dict[Path, list[Path]] = {}
        for run in runs:
            for record in run.records():
                sources = pending.setdefault(run.path, [])
                for name in record.get("inputs") or []:
                    source = run.input_path(name)
                    if source not in self.home:
                        self.home[source] = run.path
                        sources.append(source)
                if record.get("output"):
                    sources.append(run.path / record["output"])
                if len(sources) >= self.BATCH:
                    self._make(sources, run.path)
        for run_dir, sources in pending.items():
            self._make(sources, run_dir)

    def _make(self, sources: list[Path], run_dir: Path) -> None:
        made = make_thumbnails(sources, run_dir)
        self.unreadable.update(s for s in sources if s not in made)
        sources.clear()

    def output_links(self, run: RunFolder, output: str, page_dir: Path) -> tuple[str | None, str | None]:
        """`links` of a run's output, by string where the path is plain (100,000 of them, Path is slow)."""
        if output.startswith("/") or ".." in output or "//" in output or output.startswith("./"):
            return self.links(run.path / output, run.path, page_dir)
        if run.path not in self.prefixes:
            base = _link(run.path, page_dir)
            self.prefixes[run.path] = "" if base == "." else base + "/"
        prefix = self.prefixes[run.path]
        if self.unreadable and run.path / output in self.unreadable:
            return self.links(run.path / output, run.path, page_dir)
        return prefix + quote(output), prefix + quote(THUMBS.as_posix()) + "/" + thumbnail_name(output)

    def input_links(self, source: Path, run_dir: Path, page_dir: Path) -> tuple[str | None, str | None]:
        """`links` of an input, made once: datasets reuse their images."""
        if source not in self.inputs:
            self.inputs[source] = self.links(source, run_dir, page_dir)
        return self.inputs[source]

    def links(self, source: Path, run_dir: Path, page_dir: Path) -> tuple[str | None, str | None]:
        """(full-size link, thumbnail link) of `source`; None where there is none."""
        if source in self.unreadable:
            return (_link(source, page_dir) if source.exists() else None), None
        return _link(source, page_dir), _link(thumbnail_path(self.home.get(source, run_dir), source), page_dir)


def build_row(n: int, records: list[dict[str, Any] | None], runs: list[RunFolder], thumbs: Thumbs,
              page_dir: Path) -> dict[str, Any]:
    """Row `n` of the gallery: an item's records in each run (None where absent) as the page shows them."""
    k0 = next(k for k, r in enumerate(records) if r is not None)
    first, run_of_first = records[k0], runs[k0]
    inputs = []
    for name in first.get("inputs") or []:
        full, thumb = thumbs.input_links(run_of_first.input_path(name), run_of_first.path, page_dir)
        inputs.append({"full": full, "thumb": thumb, "name": Path(name).name})
    cells = []
    for run, record in zip(runs, records):
        if record is None:
            cells.append(None)
            continue
        full = thumb = None
        if record.get("output"):
            full, thumb = thumbs.output_links(run, record["output"], page_dir)
        cells.append({"status": record.get("status") or "unknown", "seconds": _seconds(record),
                      "device": record.get("device"), "error": record.get("error"), "full": full, "thumb": thumb})
    statuses = sorted({c["status"] for c in cells if c} | ({"missing"} if None in cells else set()))
    return {"n": n, "key": f"item-{n}", "id": first["id"], "category": first.get("category") or "uncategorised",
            "instruction": first.get("instruction") or "", "inputs": inputs, "cells": cells, "statuses": statuses,
            "partial": None in cells, "rank": ""}


def _add_scores(row: dict[str, Any], scored: dict[str, Any]) -> None:
    """Each output's scores and the judge's reason, under it; the row's rank for sorting worst first."""
    for k, cell in enumerate(row["cells"]):
        if cell is not None:
            cell["scores"] = score_view.item_cell(scored["per_run"][k].get(row["id"]), scored["names"])
    first = next((c["scores"] for c in row["cells"] if c and c.get("scores")), None)
    row["rank"] = first["rank"] if first and first["rank"] is not None else ""


PROBLEMS_SHOWN = 200  # failed items listed above the gallery; the status filter finds all of them


def write_report(run_dirs: list[str | Path], output: str | Path | None = None) -> ReportResult:
    """Write the report of `run_dirs` (default `<first run>/report.html`) and each run's timeline.png.

    Streamed: the manifests are read a record at a time (once for the thumbnails, once for the
    timelines, once for the rows); what is held is per item small (the gallery's index entry).
    """
    began = time.perf_counter()
    runs = [read_run_folder(d) for d in run_dirs]
    html = Path(output) if output else runs[0].path / layout.REPORT
    page_dir = html.resolve().parent
    thumbs = Thumbs(runs)

    headers, pngs = [], []
    differing = differences(runs) if len(runs) > 1 else []
    timelines = [build_timeline(run) for run in runs]
    longest = max(t.span for t in timelines)
    linked: list[set[int]] = []  # per run: the item indices a timeline bar links to
    for k, (run, timeline) in enumerate(zip(runs, timelines)):
        png = run.path / layout.TIMELINE
        write_timeline_png(timeline, png, title=f"{run.label}, {run.mode}")
        pngs.append(png)
        linked.append({b.index for lane in timeline.lanes for b in lane.bars if b.kind == "item"})
        headers.append({"name": run.name, "label": run.label, "folder": _link(run.path, page_dir),
                        "timeline": svg_geometry(timeline, span=longest), "timeline_png": _link(png, page_dir),
                        "index_to_key": {}, "column": k})
    del timelines
    scored = score_view.build(runs, page_dir, _link)
    env = Environment(loader=PackageLoader("editbatch.report", "templates"), autoescape=select_autoescape(),
                      trim_blocks=True, lstrip_blocks=True)
    item_row = env.get_template("row.html.j2").module.item_row
    folder = items_dir(html)
    gallery = GalleryWriter(folder, lambda row: item_row(row, len(runs)))
    tallies = [Tally() for _ in runs]
    problems, more_problems, partial, n = [], 0, 0, 0
    for n, records in enumerate(matched(runs)):
        row = build_row(n, records, runs, thumbs, page_dir)
        if scored is not None:
            _add_scores(row, scored)
        gallery.add(row)
        partial += row["partial"]
        for k, record in enumerate(records):
            if record is None:
                continue
            tallies[k].add(record)
            if record.get("index") in linked[k]:
                headers[k]["index_to_key"][record["index"]] = row["key"]
            if row["cells"][k]["status"] != "ok":
                if len(problems) < PROBLEMS_SHOWN:
                    problems.append({"run": runs[k].label, "row": {"key": row["key"], "id": row["id"]},
                                     "cell": row["cells"][k]})
                else:
                    more_problems += 1
    items = n + 1 if gallery.entries else 0
    shown = gallery.close()
    for k, run in enumerate(runs):
        headers[k]["figures"] = header_figures(run, tallies[k].counts(), differing)
    text = env.get_template("report.html.j2").render(
        title=" vs ".join(r.label for r in runs), runs=headers, scored=scored, categories=shown["categories"],
        statuses=shown["statuses"], problems=problems, more_problems=more_problems, partial=partial, items=items,
        items_dir=_link(folder, page_dir), page=PAGE, chunk=CHUNK, generated=time.strftime("%Y-%m-%d %H:%M:%S"))
    html.parent.mkdir(parents=True, exist_ok=True)
    tmp = html.with_name(html.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, html)  # a reader never sees half a page
    return ReportResult(html, pngs, items, time.perf_counter() - began)
