"""A finished (or running) run folder read back: summary, config, manifest, workers, run record.

The report and the status command only read files; nothing here needs Redis,
torch or a model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from .. import layout
from ..errors import EditBatchError
from ..producer.outputs import iter_manifest, read_manifest


@dataclass
class RunFolder:
    """A run folder's small files, read whole; its manifest streamed by `records()` (a 100,000-item
    run's records are not held at once)."""

    path: Path
    summary: dict[str, Any]
    config: dict[str, Any]
    workers: list[dict[str, Any]]
    run: dict[str, Any] = field(default_factory=dict)
    manifest_current: bool = True  # False: the manifest is an earlier run's, not this one's

    def records(self) -> Iterator[dict[str, Any]]:
        """The manifest's records in input order, one per item."""
        if not self.manifest_current:
            return iter(())
        path = self.path / layout.MANIFEST
        if self.summary:  # finished: rewritten with one line per item, in order
            return iter_manifest(path)
        return iter(read_manifest(path))  # being appended: a retried item has several lines, the last wins

    @property
    def name(self) -> str:
        return self.summary.get("name") or self.config.get("name") or self.run.get("name") or self.path.name

    @property
    def run_id(self) -> str | None:
        return self.summary.get("run_id") or self.run.get("run_id")

    @property
    def label(self) -> str:
        """How the report names this run: two runs of one config differ by their run ids."""
        return f"{self.name} ({self.run_id})" if self.run_id else self.name

    @property
    def mode(self) -> str | None:
        return self.summary.get("mode") or self.run.get("mode") or (self.config.get("schedule") or {}).get("mode")

    @cached_property
    def devices(self) -> list[str]:
        found = self.summary.get("devices") or self.run.get("devices") or [w.get("queue") for w in self.workers]
        seen = list(found)
        for r in self.records():  # a device that only shows up in the manifest still gets a lane
            if r.get("device") and r["device"] not in seen:
                seen.append(r["device"])
        return seen

    def input_path(self, name: str) -> Path:
        """An item's input as recorded: absolute, or relative to the directory the run was started from."""
        p = Path(name)
        if p.is_absolute():
            return p
        base = Path(self.run.get("cwd") or os.getcwd())
        return base / p


def _json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except json.JSONDecodeError as exc:
        raise EditBatchError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def read_run_folder(path: str | Path) -> RunFolder:
    folder = Path(path)
    if not folder.is_dir():
        raise EditBatchError(f"{folder}: not a run folder (no such directory)")
    if not (folder / layout.MANIFEST).is_file() and not (folder / layout.RUN).is_file():
        raise EditBatchError(f"{folder}: not a run folder (no manifest.jsonl or run.json)")
    config_file = folder / layout.CONFIG
    config = yaml.safe_load(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    run = _json(folder / layout.RUN, {})
    summary = _json(folder / layout.SUMMARY, {})
    manifest_file = folder / layout.MANIFEST
    # A run started again in the same folder: until it writes its own, the files are the last run's.
    if run.get("run_id") and summary.get("run_id") not in (None, run["run_id"]):
        summary = {}
    current = not (run.get("started_at") and manifest_file.is_file()
                   and manifest_file.stat().st_mtime < run["started_at"])
    return RunFolder(folder.resolve(), summary, config or {}, _json(folder / layout.WORKERS, []), run, current)
