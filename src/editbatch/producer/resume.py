"""Runs into a folder that already holds one: refuse, resume or start over.

A run writes ``run.json`` (its identity: model, seed, dataset digest) when
it starts. A later run into the same folder must say what it wants:
``--resume`` reuses every item whose worker record says ok and whose image
exists, and runs the rest; ``--overwrite`` deletes the earlier run's files;
neither is refused, so two runs never mix silently. A resume whose identity
differs from the folder's is refused too (``--force`` accepts it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import layout, ledger
from ..config import RunConfig
from ..dataset import Item
from ..errors import ConfigError
from .outputs import read_manifest

RUN_FILE = layout.RUN


def identity(config: RunConfig) -> dict[str, Any]:
    """Everything that changes an item's output: a resume must match it."""
    dataset = Path(config.dataset.path)
    try:
        digest = hashlib.sha256(dataset.read_bytes()).hexdigest()
    except OSError:
        digest = None
    model = config.model.model_dump(mode="json")
    return {"model": model, "seed": config.schedule.seed, "dataset": {"sha256": digest, "limit": config.dataset.limit}}


def first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """The dotted name of the first field that differs, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if old == new else path


def read_run_file(out_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_folder(out_dir: Path, config: RunConfig, source: str, *, resume: bool, overwrite: bool,
                 force: bool) -> dict[str, Any] | None:
    """Decide what an existing folder means for this run; return the earlier run.json when resuming."""
    if not layout.holds_a_run(out_dir):
        return None
    if overwrite:
        remove_run_files(out_dir)
        return None
    if not resume:
        raise ConfigError(source, "output_dir", f"{out_dir} already holds a run; use --resume to finish it, "
                                                "--overwrite to replace it, or another output_dir")
    previous = read_run_file(out_dir) or {}
    if previous.get("identity") and not force:
        field = first_difference(previous["identity"], identity(config))
        if field:
            raise ConfigError(source, field, f"differs from the run in {out_dir}, so its outputs cannot be reused "
                                             "(--force resumes anyway)")
    return previous


def remove_run_files(out_dir: Path) -> None:
    for name in layout.RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)
    for name in layout.RUN_FOLDERS:
        shutil.rmtree(out_dir / name, ignore_errors=True)


@dataclass
class Carried:
    """What a resume takes over from the folder: finished items, and the history of the others."""

    done: dict[int, dict[str, Any]] = field(default_factory=dict)  # item index -> manifest record
    history: dict[int, dict[str, Any]] = field(default_factory=dict)  # earlier attempts of items that failed
    previous: dict[int, dict[str, Any]] = field(default_factory=dict)  # the last record of every item not done


def previous_manifest(out_dir: Path) -> dict[str, dict[str, Any]]:
    """The earlier run's last record per item id."""
    return {str(r["id"]): r for r in read_manifest(out_dir / layout.MANIFEST) if "id" in r}


def producer_alive(run: dict[str, Any]) -> bool | None:
    """Whether the process named in run.json still exists: None when it runs on another host."""
    pid = run.get("pid")
    if run.get("host") != socket.gethostname() or not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def carry_over(out_dir: Path, items: list[Item], seeds: dict[int, int], model: dict[str, Any]) -> Carried:
    """Split the valid items into those already done (reused) and those to run.

    An item is done when the worker's record says ok and its image exists,
    whether or not a producer was listening when it finished. On a finished
    run that leaves exactly its failed items: `editbatch retry`.
    """
    records = ledger.scan(out_dir)
    manifest = previous_manifest(out_dir)
    carried = Carried()
    for item in items:
        if not item.valid:
            continue
        seed = seeds[item.index]
        old = manifest.get(item.id)
        record = records.get(item.id)
        if ledger.is_done(out_dir, record, seed=seed, model=model):
            carried.done[item.index] = {**(old if old and old.get("status") == "ok" else {}), **_from_record(record),
                                        "index": item.index, "reused": True}
        elif old is not None:
            carried.previous[item.index] = old
            if old.get("status") == "failed":
                carried.history[item.index] = old
    return carried


def _from_record(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "status", "output", "device", "worker", "seed", "started_at", "finished_at", "work_s", "batch",
            "run")
    out = {k: record.get(k) for k in keys}
    info = record.get("info") or {}
    for key in ("input_size", "input_sizes", "generated_size", "output_size", "size_policy"):
        if key in info:
            out[key] = info[key]
    if record.get("scores"):
        out["scores"] = record["scores"]  # computed with the edit: a resume keeps them
    out["error"] = None
    return out
