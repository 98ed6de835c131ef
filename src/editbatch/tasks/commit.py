"""Committing an item: of all the attempts at it, exactly one names the item's files.

Each attempt (one claim of the item, fenced by its token: see claim.py)
writes its image and full record under ``<output_dir>/.attempts/``, named
with its token. One compare-and-set in Redis then commits it: it succeeds
only for the attempt whose token is still the item's epoch, and only while
no attempt is committed (or the same one is: a retried call). Only then are
the attempt's files moved into place, image first and record last, each an
atomic rename. The move is idempotent and anyone may finish it: the
committer, or a later copy that finds the commit while the record is not in
place (its committer died between the two). A late holder (paused past its
claim, then continued) finds its token stale: it removes its own files, and
the item is what the committed attempt wrote. No other attempt's bytes ever
reach the final names, and no record says ok before its image is in place.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from redis import Redis

from .. import keys, layout, ledger
from ..atomicfile import write_atomic, write_both
from ..dataset import output_name
from ..imageio import png_bytes

# Commit `token` if it is the item's epoch and nothing is committed; returns the committed token (0: none,
# and ours is stale). An item with no epoch at all lost its state (a Redis that kept no data): the first
# attempt to commit wins, and every other copy then takes its record, so disk and reports still agree.
_COMMIT = """
local committed = redis.call('hget', KEYS[1], 'committed')
if committed then return committed end
local epoch = redis.call('hget', KEYS[1], 'epoch')
if epoch and epoch ~= ARGV[1] then return '0' end
redis.call('hset', KEYS[1], 'epoch', ARGV[1], 'committed', ARGV[1])
redis.call('expire', KEYS[1], ARGV[2])
return ARGV[1]
"""

# Forget a commit whose files are gone or are another task's (a folder emptied by hand, another seed).
_UNCOMMIT = """
if redis.call('hget', KEYS[1], 'committed') == ARGV[1] then return redis.call('hdel', KEYS[1], 'committed') end
return 0
"""


class WriteFailed(Exception):
    """An attempt's file could not be written or moved (a full or read-only disk): fails that item only."""


def _why(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0)
    return f"{exc.strerror or exc}" + (f" ({name})" if name else "")


@dataclass(frozen=True)
class Attempt:
    """The files of one attempt at an item, named with its fencing token."""

    output_dir: Path
    item_id: str
    token: int

    @property
    def _stem(self) -> str:
        return output_name(self.item_id).removesuffix(".png")

    @property
    def image(self) -> Path:
        return self.output_dir / layout.ATTEMPTS / f"{self._stem}.{self.token}.png"

    @property
    def record(self) -> Path:
        return self.output_dir / layout.ATTEMPTS / f"{self._stem}.{self.token}.json"

    @property
    def final_image(self) -> Path:
        return self.output_dir / ledger.image_relpath(self.item_id)

    @property
    def final_record(self) -> Path:
        return ledger.record_path(self.output_dir, self.item_id)

    def write(self, image: Image.Image, record: dict[str, Any]) -> None:
        """Write this attempt's image and record (both fsynced, side by side; the record in place only once
        the image is); WriteFailed names the file that failed."""
        target = self.image
        try:
            # The final folders too: a disk that is full now fails the item here, not after its commit.
            for folder in (self.image.parent, self.final_image.parent, self.final_record.parent):
                target = folder
                folder.mkdir(parents=True, exist_ok=True)
            target = self.image
            png = png_bytes(image)
            text = json.dumps({**record, "attempt": self.token}) + "\n"
            write_both((self.image, png), (self.record, text))
        except OSError as exc:
            self.discard()
            target = Path(exc.filename) if exc.filename else target  # atomicfile names the file it was writing
            raise WriteFailed(f"could not write {target}: {_why(exc)}") from None

    def discard(self) -> None:
        for path in (self.image, self.record):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass  # a stray attempt file is never read: only committed tokens are

    def move_into_place(self) -> dict[str, Any] | None:
        """Finish this committed attempt: its files under the final names (idempotent; anyone may call it).

        Returns the record now in place, or None when there is none. The
        attempt's record is looked at before the final one: the record is
        moved last, so once it has left `.attempts` the image is in place.
        """
        if self.record.exists():
            _move(self.image, self.final_image)
            _move(self.record, self.final_record)
        return ledger.read_record(self.final_record)


def adopt(output_dir: Path, item_id: str, token: int, *, seed: int | None = None,
          model: dict[str, Any] | None = None, folder: str | None = None) -> tuple[Attempt, dict[str, Any]] | None:
    """Take over a whole, uncommitted attempt at the item that is older than ours, as attempt `token`.

    An edit that finished while its worker could not commit (Redis gone
    with a killed run, or its holder replaced) left its files in
    `.attempts`; the holder of the current claim may commit them instead of
    computing the item again. Any older attempt is stale, so its holder can
    only discard it: the image is taken with one rename (whoever loses that
    race moves on), then the record is written under our token. Only an
    attempt made for the same seed, model and folder incarnation qualifies.
    """
    stem = output_name(item_id).removesuffix(".png")
    older = []
    try:
        names = os.listdir(output_dir / layout.ATTEMPTS)  # only attempts in flight or left behind: a few
    except FileNotFoundError:
        return None
    for name in names:
        mark = name[len(stem) + 1:-len(".json")]
        if name.startswith(stem + ".") and name.endswith(".json") and mark.isdigit() and int(mark) < token:
            older.append(Attempt(output_dir, item_id, int(mark)))
    mine = Attempt(output_dir, item_id, token)
    for orphan in sorted(older, key=lambda a: -a.token):
        record = ledger.read_record(orphan.record)
        if not record or record.get("id") != item_id or record.get("status") != "ok" or not record.get("output"):
            continue
        if (seed is not None and record.get("seed") != seed) or record.get("folder") != folder \
                or (model is not None and record.get("model") not in (None, model)):
            continue
        try:
            os.replace(orphan.image, mine.image)
        except FileNotFoundError:
            continue  # its holder discarded it just now
        except OSError as exc:
            raise WriteFailed(f"could not move {orphan.image} to {mine.image}: {_why(exc)}") from None
        try:
            write_atomic(mine.record, json.dumps({**record, "attempt": token}) + "\n")
        except OSError as exc:
            mine.discard()
            raise WriteFailed(f"could not write {mine.record}: {_why(exc)}") from None
        orphan.discard()
        return mine, {**record, "attempt": token}
    return None


def _move(source: Path, target: Path) -> None:
    try:
        os.replace(source, target)
    except FileNotFoundError:
        if not target.exists():
            raise WriteFailed(f"could not move {source} to {target}: the committed attempt's file is missing") from None
    except OSError as exc:
        raise WriteFailed(f"could not move {source} to {target}: {_why(exc)}") from None


def commit(redis: Redis, fence_key: str, token: int) -> int:
    """Commit attempt `token`; returns the committed token (ours if we won), 0 when none is and ours is stale."""
    return int(redis.eval(_COMMIT, 1, fence_key, token, keys.ITEM_FENCE_TTL_S))


def committed(redis: Redis, fence_key: str) -> int | None:
    value = redis.hget(fence_key, "committed")
    return int(value) if value is not None else None


def uncommit(redis: Redis, fence_key: str, token: int) -> bool:
    return bool(redis.eval(_UNCOMMIT, 1, fence_key, token))


def committed_record(redis: Redis, fence_key: str, output_dir: str | Path, item_id: str, token: int, *,
                     seed: int | None = None, model: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The record of the committed attempt `token`, its move finished; None (and the commit forgotten)
    when its files are gone or were made for another seed or model."""
    record = Attempt(Path(output_dir), item_id, token).move_into_place()
    if ledger.is_done(output_dir, record, seed=seed, model=model):
        return record
    uncommit(redis, fence_key, token)
    return None
