"""The report's gallery, streamed: every row rendered once into chunk files beside the page.

A 100,000-item page of ~700 bytes per row (70 MB) took a browser minutes to
open. The page now holds the first PAGE rows of the gallery; every row's
HTML goes into `<page>/items/chunk-NNNNN.js` (CHUNK rows each, by row
number), and `index.js` holds one compact entry per row (row number,
category, statuses, score rank, searched text) over which the page's script
filters, searches, sorts and pages, loading the chunks a page shows. The
chunks are scripts, not JSON: a page opened from file:// may not fetch().

Rows are matched by item id across runs, in the first run's order, then the
items only in later runs; the first run streams, later runs (comparisons)
are held by id.
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .run_folder import RunFolder

PAGE = 100  # rows per gallery page; the HTML holds the first
CHUNK = 100  # rows per chunk file: a page of one category in input order spans a few


def items_dir(html: Path) -> Path:
    """Where a page's chunks and index go: `report.html` -> `report/items/` (the run's report folder)."""
    return html.with_suffix("") / "items"


def matched(runs: list[RunFolder]) -> Iterator[list[dict[str, Any] | None]]:
    """Each item's record in each run (None where absent), rows in the first run's order, then the rest."""
    later = [{r["id"]: r for r in run.records()} for run in runs[1:]]
    for record in runs[0].records():
        yield [record] + [other.pop(record["id"], None) for other in later]
    for k, other in enumerate(later):
        for item_id, record in other.items():
            yield [None] * (k + 1) + [record] + [o.pop(item_id, None) for o in later[k + 1:]]


class GalleryWriter:
    """Rows in, chunk files and the index out; keeps the index entries and the gallery's first page."""

    def __init__(self, folder: Path, render_row: Callable[[dict[str, Any]], str]):
        self.folder = folder
        self.render_row = render_row
        self.tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.entries: list[tuple[str, int, str, float | None, str]] = []  # (category, row, statuses, rank, text)
        self.chunk: list[str] = []
        self.first: list[tuple[str, int, str]] = []  # the gallery's first PAGE rows: (category, row, html)

    def add(self, row: dict[str, Any]) -> None:
        html = str(self.render_row(row))
        n, category = row["n"], row["category"]
        rank, statuses = row.get("rank"), sys.intern(" ".join(row["statuses"]))  # interned: one per kind
        self.entries.append((sys.intern(category), n, statuses, rank if rank != "" else None,
                             f"{row['id']} {row['instruction']}".lower()))
        if len(self.first) < PAGE or (category, n) < self.first[-1][:2]:
            bisect.insort(self.first, (category, n, html))
            del self.first[PAGE:]
        self.chunk.append(html)
        if len(self.chunk) == CHUNK:
            self._flush()

    def _flush(self) -> None:
        k = (len(self.entries) - 1) // CHUNK
        (self.tmp / f"chunk-{k:05d}.js").write_text(f"editbatchChunk({k},{json.dumps(self.chunk)});\n",
                                                     encoding="utf-8")
        self.chunk = []

    def close(self) -> dict[str, Any]:
        """Write index.js, put the folder in place; what the page needs: categories, statuses, first page."""
        if self.chunk:
            self._flush()
        self.entries.sort(key=lambda e: (e[0], e[1]))  # the gallery's order: by category, then input order
        categories = list(dict.fromkeys(e[0] for e in self.entries))
        number = {c: k for k, c in enumerate(categories)}
        sizes = dict.fromkeys(categories, 0)
        with (self.tmp / "index.js").open("w", encoding="utf-8") as fh:
            fh.write(f"editbatchIndex({json.dumps({'page': PAGE, 'chunk': CHUNK, 'categories': categories})}, [\n")
            for k, (category, n, statuses, rank, text) in enumerate(self.entries):
                sizes[category] += 1
                fh.write(("," if k else "") + json.dumps([n, number[category], statuses, rank, text]) + "\n")
            fh.write("]);\n")
        statuses = sorted({s for e in self.entries for s in e[2].split()})
        self.entries = []
        old = self.folder.with_name(f".{self.folder.name}.{os.getpid()}.old")
        if self.folder.exists():
            self.folder.rename(old)
        self.tmp.rename(self.folder)
        shutil.rmtree(old, ignore_errors=True)
        first: dict[str, list[str]] = {}
        for category, _, html in self.first:
            first.setdefault(category, []).append(html)
        return {"categories": [(c, sizes[c], first.get(c, [])) for c in categories], "statuses": statuses}
