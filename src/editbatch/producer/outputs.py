"""The files of a run: manifest.jsonl, workers.json, summary.json.

The manifest is appended as results arrive (a crash keeps what finished) and
rewritten in input order when the run ends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import layout
from ..atomicfile import write_atomic

MANIFEST_FIELDS = ("id", "index", "status", "output", "device", "worker", "batch", "seed", "submitted_at",
                   "started_at", "finished_at", "reported_at", "error", "attempt", "clock_offset_s")


def manifest_record(item, seed: int, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """One manifest line; `result` is the worker's (or a synthesised) result, None for invalid items."""
    record: dict[str, Any] = {k: None for k in MANIFEST_FIELDS}
    record.update(id=item.id, index=item.index, line=item.line, seed=seed, category=item.category,
                  instruction=item.instruction, inputs=[str(p) for p in item.images])
    if item.target is not None:
        record["target"] = str(item.target)
    columns = {k: v for k, v in item.extra.items() if k != "params"}
    if columns:
        record["columns"] = columns  # the dataset's other columns (task type, language...): categories for scores
    if result is None:
        record.update(status="invalid", error=item.error)
        return record
    for key in MANIFEST_FIELDS:
        if key in result and key not in ("id", "index"):
            record[key] = result[key]
    info = result.get("info") or {}
    for key in ("input_size", "input_sizes", "generated_size", "output_size", "size_policy"):
        if key in info:
            record[key] = info[key]
    if result.get("work_s") is not None:
        record["work_s"] = result["work_s"]
    if result.get("scores"):
        record["scores"] = result["scores"]
    return record


class Manifest:
    def __init__(self, output_dir: Path):
        self.path = output_dir / layout.MANIFEST
        self.records: dict[int, dict[str, Any]] = {}
        self.write_error: OSError | None = None  # the first failed append (a full disk): the run stops on it
        self._fh = self.path.open("w", encoding="utf-8")

    def add(self, record: dict[str, Any]) -> None:
        self.records[record["index"]] = record
        if self.write_error is not None:
            return  # kept in memory; the workers' records hold every finished item anyway
        try:
            self._fh.write(json.dumps(record) + "\n")
            self._fh.flush()
        except OSError as exc:
            self.write_error = exc

    def finalize(self) -> list[dict[str, Any]]:
        try:
            self._fh.close()
        except OSError:
            pass  # the unwritten tail is rewritten whole just below
        ordered = [self.records[i] for i in sorted(self.records)]
        write_jsonl(self.path, ordered)
        return ordered


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """The manifest's records, one per index, in input order.

    The file is appended as results arrive, so a running or killed run has
    several lines for a retried item (the last wins) and may end in a line
    cut short; a finished run's file has been rewritten with one line each.
    """
    if not path.is_file():
        return []
    by_index: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # empty, or being written (or cut short by a crash)
        if isinstance(record, dict):
            by_index[record.get("index", len(by_index))] = record
    return [by_index[i] for i in sorted(by_index)]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(record) + "\n" for record in records))


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")
