"""Small JPEG copies of inputs and outputs under `<run folder>/report/thumbs/`.

A 5,000-item gallery must open fast: the page shows these (a few kB each)
and links to the full-size files. Decoding thousands of full-size images
to make them is what made a report slow, so workers write them as they go,
from the images they hold in memory anyway (an encode of a small image:
a few ms); the report makes only those missing or older than their source,
e.g. for a run from before workers did this.

Both sides name and encode them here, and nothing here imports Jinja2 or
matplotlib: workers import this module.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from PIL import Image, ImageOps

from ..atomicfile import write_atomic
from ..imageio import to_rgb

SIZE = 160
QUALITY = 80
THUMBS = Path("report") / "thumbs"  # inside each run folder

log = logging.getLogger("editbatch.thumbnails")


def thumbnail_path(run_dir: Path, source: Path) -> Path:
    """Where the thumbnail of `source` lives in `run_dir`.

    A run's own images are named by their path inside the run folder, so a
    moved or copied folder keeps its thumbnails; inputs by their real path,
    so an input used by many items has one.
    """
    try:
        key = source.relative_to(run_dir).as_posix()
    except ValueError:
        key = os.path.realpath(source)
    return run_dir / THUMBS / thumbnail_name(key)


def thumbnail_name(key: str) -> str:
    """The file name of the thumbnail of `key` (see `thumbnail_path`)."""
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:16] + ".jpg"


def is_fresh(source: Path, target: Path) -> bool:
    """True when `target` exists, is not empty (a write cut short) and is not older than `source`."""
    try:
        made = target.stat()
        return made.st_size > 0 and made.st_mtime >= source.stat().st_mtime
    except OSError:
        return False


def encode(image: Image.Image) -> bytes:
    """The JPEG bytes of `image` shrunk to fit SIZE x SIZE (`image` is left as it is)."""
    small = to_rgb(image)
    small.thumbnail((SIZE, SIZE))  # reduces by whole factors first, then resamples: cheap
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=QUALITY)
    return buffer.getvalue()


def write_thumbnail(image: Image.Image, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, encode(image), sync=False)  # a cache: remade when missing or stale


def write_item_thumbnails(run_dir: str | Path, output: Path, image: Image.Image,
                          inputs: Iterable[tuple[str | Path, Image.Image]] = ()) -> None:
    """A worker's thumbnails of one item: its output, and each input not already made.

    Best effort: the item is done whatever happens here (the report makes
    any thumbnail that is missing).
    """
    run_dir = Path(run_dir)
    try:
        target = thumbnail_path(run_dir, output)
        if not is_fresh(output, target):  # a report built meanwhile may have made it (they come after the result)
            write_thumbnail(image, target)
        for source, decoded in inputs:
            target = thumbnail_path(run_dir, Path(source))
            if not is_fresh(Path(source), target):
                write_thumbnail(decoded, target)
    except Exception as exc:  # noqa: BLE001 - a thumbnail never fails an item
        log.debug("thumbnails of %s not written: %s: %s", output, exc.__class__.__name__, exc)


def _make(source: Path, target: Path) -> bool:
    """Decode `source` and write `target`; False when the source cannot be read."""
    try:
        with Image.open(source) as im:
            im.draft("RGB", (SIZE, SIZE))  # JPEG sources decode at a reduced scale: much faster
            write_thumbnail(ImageOps.exif_transpose(im), target)
    except (OSError, ValueError, Image.DecompressionBombError):
        return False
    return True


def _make_all(pairs: list[tuple[Path, Path]], workers: int) -> list[bool]:
    if workers <= 1 or len(pairs) < 2:
        return [_make(s, t) for s, t in pairs]
    from concurrent.futures import ThreadPoolExecutor

    # Threads: PIL releases the GIL while decoding and encoding. On 2 cores they
    # were as fast as a process pool (2.2 s against 2.5 s for 440 images, serial
    # 4.3 s) without its start-up cost or its need for a `__main__` guard in callers.
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(_make, *zip(*pairs)))


def make_thumbnails(sources: list[Path], run_dir: Path, workers: int | None = None) -> dict[Path, Path]:
    """Thumbnails of `sources` in `run_dir`, made where missing or stale; the map leaves out unreadable sources."""
    unique = list(dict.fromkeys(sources))
    targets = [thumbnail_path(run_dir, s) for s in unique]
    stale = [(s, t) for s, t in zip(unique, targets) if not is_fresh(s, t)]
    if stale:
        (run_dir / THUMBS).mkdir(parents=True, exist_ok=True)
    failed = {s for (s, _), ok in zip(stale, _make_all(stale, workers or os.cpu_count() or 1)) if not ok}
    return {s: t for s, t in zip(unique, targets) if s not in failed}
