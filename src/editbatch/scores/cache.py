"""The score cache: one small JSON file per score, keyed by what the score depends on.

The key digests the output image, the input images, the target, the
instruction, the scorer and its version, and (for the judge) the model, the
prompt template and the decoding settings: change any of them and the item
is scored again; change none and it is never asked again (resume, retry,
re-run). Files are written atomically, so a process killed mid-write leaves
no half entry.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..atomicfile import write_atomic


def file_digest(path: str | Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def score_key(**parts: Any) -> str:
    """A digest of every part that decides a score (JSON with sorted keys, so the order of parts is irrelevant)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class ScoreCache:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(key).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(value))
