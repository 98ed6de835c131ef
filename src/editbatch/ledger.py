"""What an output folder already holds: one record per finished item, written by the worker.

Next to ``images/<name>.png`` the worker puts ``records/<name>.json`` once
the image is in place: both are moved there from the attempt that
committed the item (see tasks/commit.py), so a record always names the
image beside it. The records, not the producer's manifest, are the
ledger of finished work: an item that finished
while no producer was listening (killed, rebooted) is still found by a
resume, and a redelivered or resumed copy of a finished item is answered
from its record instead of being computed again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import layout
from .dataset import output_name

RECORDS = layout.RECORDS
IMAGES = layout.IMAGES


def image_relpath(item_id: str) -> str:
    return f"{IMAGES}/{output_name(item_id)}"


def record_path(output_dir: str | Path, item_id: str) -> Path:
    return Path(output_dir) / RECORDS / (output_name(item_id).removesuffix(".png") + ".json")


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing, or not ours: treated as not done
    return record if isinstance(record, dict) and "id" in record else None


def is_done(output_dir: str | Path, record: dict[str, Any] | None, *, seed: int | None = None,
            model: dict[str, Any] | None = None) -> bool:
    """An ok record whose image exists, made with this seed and model (when given)."""
    if not record or record.get("status") != "ok" or not record.get("output"):
        return False
    if seed is not None and record.get("seed") != seed:
        return False
    if model is not None and record.get("model") not in (None, model):
        return False
    image = Path(output_dir) / record["output"]
    return image.is_file() and image.stat().st_size > 0


def done_record(output_dir: str | Path, item_id: str, *, seed: int | None = None,
                model: dict[str, Any] | None = None) -> dict[str, Any] | None:
    record = read_record(record_path(output_dir, item_id))
    return record if is_done(output_dir, record, seed=seed, model=model) else None


def scan(output_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every readable record of the folder, by item id."""
    folder = Path(output_dir) / RECORDS
    found: dict[str, dict[str, Any]] = {}
    if folder.is_dir():
        for path in folder.glob("*.json"):
            record = read_record(path)
            if record is not None:
                found[str(record["id"])] = record
    return found
