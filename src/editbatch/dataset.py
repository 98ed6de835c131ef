"""Dataset files (JSONL or CSV) and the per-item checks run before anything is submitted.

A bad item never stops a run: it is kept with status ``invalid`` and a
reason, and the others go on. Only an unreadable dataset file is fatal.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import DEFAULT_MAX_PIXELS
from .errors import ConfigError

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Item:
    index: int  # position in the dataset file (0-based), over all rows
    id: str
    images: list[Path]
    instruction: str
    category: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # set when the item is invalid
    line: int | None = None  # where the row starts in the dataset file (1-based, as editors count)
    target: Path | None = None  # the ground-truth image, for scores against it (column `target`)

    @property
    def valid(self) -> bool:
        return self.error is None


def where(item: Item) -> str:
    """`cat-01 (line 7)`: an item as a person finds it in the dataset file."""
    return f"{item.id} (line {item.line})" if item.line is not None else item.id


def output_name(item_id: str) -> str:
    """A file name for the item's output that cannot leave the images folder.

    Ids made only of safe characters are used as they are; anything else is
    cleaned and suffixed with a hash of the original id, so two ids that clean
    to the same text still get different files.
    """
    cleaned = _SAFE.sub("_", item_id).strip("._")[:120]
    if cleaned == item_id and cleaned:
        return f"{cleaned}.png"
    digest = hashlib.sha1(item_id.encode("utf-8")).hexdigest()[:10]
    return f"{cleaned or 'item'}-{digest}.png"


def load_dataset(path: Path, fmt: str = "auto", limit: int | None = None, *, source: str = "dataset") -> list[Item]:
    """Read every row of a dataset file into `Item`s (unchecked; see `check_items`)."""
    path = Path(path)
    if fmt == "auto":
        fmt = "csv" if path.suffix.lower() == ".csv" else "jsonl"
    try:
        # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark that would otherwise
        # become part of the first column's name, and the `id` column would be lost.
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(source, "dataset.path", f"dataset file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, "dataset.path", f"cannot read dataset file {path}: {exc}") from None
    rows = _csv_rows(text) if fmt == "csv" else _jsonl_rows(text)
    base = path.parent
    items = [_item(i, line, row, base) for i, (line, row) in enumerate(rows)]
    if limit is not None:
        items = items[:limit]
    if not items:
        raise ConfigError(source, "dataset.path", f"dataset file has no items: {path}")
    return items


Row = tuple[int, "dict[str, Any] | str"]  # (line number, the row, or why it is not one)


def _jsonl_rows(text: str) -> list[Row]:
    rows: list[Row] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append((number, f"not valid JSON ({exc.msg})"))
            continue
        rows.append((number, row if isinstance(row, dict) else "expected a JSON object"))
    return rows


def _csv_rows(text: str) -> list[Row]:
    rows: list[Row] = []
    reader = csv.DictReader(text.splitlines())
    start = 2  # the header is line 1
    for row in reader:
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        if row.get("images"):
            row["images"] = [p for p in row["images"].split("|") if p]
        rows.append((start, row))
        start = reader.line_num + 1  # a quoted field may span lines
    return rows


def _item(index: int, line: int, row: dict[str, Any] | str, base: Path) -> Item:
    if isinstance(row, str):
        return Item(index, f"line{line:05d}", [], "", error=row, line=line)
    item_id = str(row.get("id") or f"item{index:05d}")
    paths = row.get("images") if row.get("images") else row.get("image")
    if isinstance(paths, str):
        paths = [paths]
    error = None
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        paths, error = [], "no input image given (field 'image' or 'images')"
    instruction = row.get("instruction", row.get("prompt", ""))
    if not isinstance(instruction, str):
        instruction, error = str(instruction), error or "instruction is not a string"
    extra = {k: v for k, v in row.items()
             if k not in ("id", "image", "images", "instruction", "prompt", "category", "target")}
    category = row.get("category") or None
    target = row.get("target") or None
    if target is not None and not isinstance(target, str):
        target, error = None, error or "target is not a file path"
    return Item(index, item_id, [(base / p) for p in paths], instruction, category and str(category), extra, error,
                line, base / target if target else None)


def check_items(items: list[Item], *, max_images: int = 1, decode: bool = True,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Item]:
    """Mark bad items invalid (in place) and return them all.

    Checks: empty instruction, duplicate id (the later one is invalid), too
    many images for the model, missing, empty, undecodable or too large
    (over `max_pixels`, read from the header) image files.
    Non-RGB images are fine: workers convert them.
    """
    seen: set[str] = set()
    checked: dict[Path, str | None] = {}
    for item in items:
        if item.error:
            continue
        if item.id in seen:
            item.error = f"duplicate id {item.id!r}"
            continue
        seen.add(item.id)
        if not item.instruction.strip():
            item.error = "empty instruction"
        elif len(item.images) > max_images:
            item.error = f"{len(item.images)} input images, but this model takes at most {max_images}"
        else:
            for image in item.images + ([item.target] if item.target else []):
                if image not in checked:
                    checked[image] = _image_problem(image, decode, max_pixels)
                if checked[image]:
                    item.error = checked[image]
                    break
    return items


def _image_problem(path: Path, decode: bool, max_pixels: int) -> str | None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"image file not found: {path}"
    except OSError as exc:
        return f"cannot read image {path}: {exc.strerror}"
    if size == 0:
        return f"image file is empty: {path}"
    if not decode:
        return None
    from PIL import UnidentifiedImageError

    from .imageio import ImageTooLarge, open_limited

    try:
        with open_limited(path, max_pixels) as img:
            img.verify()
    except ImageTooLarge as exc:
        return str(exc)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"image cannot be decoded: {path} ({exc.__class__.__name__}: {exc})"
    return None
