"""The files of a run: manifest.jsonl, workers.json, summary.json.

The manifest is appended as results arrive (a crash keeps what finished) and
rewritten in input order, line by line, when the run ends.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
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
    """manifest.jsonl while the run lasts: appended, with only where each item's last line is kept in memory.

    A 100,000-item run would otherwise hold every record (about 1.5 KB each)
    until its end; here the producer keeps an offset and a status per item,
    reads a record back when it needs one (an item closed after a failed
    attempt), and rewrites the file in input order line by line.
    """

    def __init__(self, output_dir: Path):
        self.path = output_dir / layout.MANIFEST
        # index -> (offset, length) of its last line, or None while the record is only in `unwritten`
        self.where: dict[int, tuple[int, int] | None] = {}
        self.state: dict[int, tuple[str | None, bool]] = {}  # index -> (status, retrying), for the counts
        self.unwritten: dict[int, dict[str, Any]] = {}  # records a failed append (a full disk) keeps in memory
        self.write_error: OSError | None = None  # the first failed append: the run stops on it
        self._fh = self.path.open("wb")
        self._end = 0

    def add(self, record: dict[str, Any]) -> None:
        index = record["index"]
        self.state[index] = (record.get("status"), bool(record.get("retrying")))
        if self.write_error is None:
            line = (json.dumps(record) + "\n").encode("utf-8")
            try:
                self._fh.write(line)
                self._fh.flush()
            except OSError as exc:
                self.write_error = exc
            else:
                self.where[index] = (self._end, len(line))
                self._end += len(line)
                self.unwritten.pop(index, None)
                return
        self.where[index] = None  # the workers' records hold every finished item anyway
        self.unwritten[index] = record

    def get(self, index: int) -> dict[str, Any] | None:
        """The item's last record, read back from the file."""
        if index not in self.where:
            return None
        place = self.where[index]
        if place is None:
            return self.unwritten[index]
        return json.loads(self._read(*place))

    def _read(self, offset: int, length: int) -> bytes:
        with self.path.open("rb") as fh:
            fh.seek(offset)
            return fh.read(length)

    def statuses(self) -> Iterator[dict[str, Any]]:
        """Each item's last status as a small record, for `counts.count`."""
        for index, (status, retrying) in self.state.items():
            yield {"index": index, "status": status, "retrying": retrying}

    def finalize(self) -> Iterator[dict[str, Any]]:
        """Rewrite the file in input order, one line per item, yielding each record as it is written.

        Streamed: one record in memory at a time. The rewritten file replaces
        the appended one once every line is written (and synced); a consumer
        that stops early leaves the appended file, which readers also accept.
        """
        try:
            self._fh.close()
        except OSError:
            pass  # the unwritten tail is in `unwritten`, written below
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with self.path.open("rb") as src, tmp.open("wb") as out:
                for index in sorted(self.where):
                    place = self.where[index]
                    if place is None:
                        record = self.unwritten[index]
                        line = (json.dumps(record) + "\n").encode("utf-8")
                    else:
                        src.seek(place[0])
                        line = src.read(place[1])
                        record = json.loads(line)
                    out.write(line)
                    yield record
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        finally:
            if tmp.exists():
                tmp.unlink()


def iter_manifest(path: Path) -> Iterator[dict[str, Any]]:
    """A rewritten (finished) manifest's records, streamed; `read_manifest` for one still being appended."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


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
