"""Small JPEG copies of inputs and outputs, made once and reused while the source is unchanged.

A 5,000-item gallery must open fast: the page shows these (a few kB each)
and links to the full-size files. A thumbnail's name is a hash of its
source path, so an input image used by many items is made once.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps

SIZE = 160
QUALITY = 80


def thumbnail_name(source: Path) -> str:
    return hashlib.sha1(str(source).encode("utf-8")).hexdigest()[:16] + ".jpg"


def _make(source: Path, target: Path) -> bool:
    """Write `target` unless it is newer than `source`; False when the source cannot be read."""
    try:
        src_mtime = source.stat().st_mtime
    except OSError:
        return False
    try:
        if target.stat().st_mtime >= src_mtime:
            return True
    except OSError:
        pass
    try:
        with Image.open(source) as im:
            im.draft("RGB", (SIZE, SIZE))  # JPEG sources decode at a reduced scale: much faster
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((SIZE, SIZE))
            tmp = target.with_suffix(".tmp.jpg")
            im.save(tmp, "JPEG", quality=QUALITY)
            os.replace(tmp, target)
    except (OSError, ValueError, Image.DecompressionBombError):
        return False
    return True


def make_thumbnails(sources: list[Path], folder: Path, workers: int | None = None) -> dict[Path, Path]:
    """Thumbnails of `sources` in `folder`; the returned map leaves out any source that could not be read."""
    folder.mkdir(parents=True, exist_ok=True)
    unique = list(dict.fromkeys(sources))
    targets = [folder / thumbnail_name(s) for s in unique]
    # PIL releases the GIL while decoding and encoding, so threads use every core.
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        made = list(pool.map(_make, unique, targets))
    return {s: t for s, t, ok in zip(unique, targets, made) if ok}
