"""A finished (or running) run folder read back: summary, config, manifest, workers, run record.

The report and the status command only read files; nothing here needs Redis,
torch or a model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import layout
from ..errors import EditBatchError
from ..producer.outputs import read_manifest


@dataclass
class RunFolder:
    path: Path
    summary: dict[str, Any]
    config: dict[str, Any]
    manifest: list[dict[str, Any]]
    workers: list[dict[str, Any]]
    run: dict[str, Any] = field(default_factory=dict)

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

    @property
    def devices(self) -> list[str]:
        found = self.summary.get("devices") or self.run.get("devices") or [w.get("queue") for w in self.workers]
        seen = list(found)
        for r in self.manifest:  # a device that only shows up in the manifest still gets a lane
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
    manifest = read_manifest(manifest_file)
    # A run started again in the same folder: until it writes its own, the files are the last run's.
    if run.get("run_id") and summary.get("run_id") not in (None, run["run_id"]):
        summary = {}
    if run.get("started_at") and manifest_file.is_file() and manifest_file.stat().st_mtime < run["started_at"]:
        manifest = []
    return RunFolder(folder.resolve(), summary, config or {}, manifest, _json(folder / layout.WORKERS, []), run)
