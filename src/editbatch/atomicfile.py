"""Write a file so that readers (and a resume after a crash) see the old or the new one, never half."""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def write_atomic(path: Path, data: str | bytes, *, sync: bool = True) -> None:
    """Write beside `path` under a name unique to this process and thread, fsync, then rename over it.

    `sync=False` skips the fsync, for files that are only a cache (a power cut may
    then leave an empty one, which its reader remakes): it takes ~0.4 ms off each write.
    """
    tmp = _write_beside(path, data, sync)
    _rename(tmp, path)


def write_both(first: tuple[Path, str | bytes], second: tuple[Path, str | bytes]) -> None:
    """Write two files as `write_atomic` does, fsynced side by side, the second renamed into place only
    once the first is (a reader that finds the second finds the first whole).

    Two fsyncs in flight together can share one journal commit on ext4 (about 0.2 ms less than one
    after the other here). An error writing either raises once both writes are over (the first's, when
    both failed); the second is then not in place.
    """
    try:
        done: Future = _helper().submit(write_atomic, *first)
    except RuntimeError:  # the interpreter is exiting (a cold shutdown mid-edit): no new threads, one by one
        write_atomic(*first)
        write_atomic(*second)
        return
    tmp: Path | None = None
    try:
        tmp = _write_beside(*second, True)
    except BaseException as exc:  # noqa: BLE001 - raised below, once the first write is over
        failed: BaseException | None = exc
    else:
        failed = None
    try:
        done.result()  # the first file's error, when both failed (a full disk): it is the one written first
    except BaseException:
        if tmp is not None:
            _remove(tmp)
        raise
    if failed is not None:
        raise failed
    _rename(tmp, second[0])


def _write_beside(path: Path, data: str | bytes, sync: bool) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as fh:
            fh.write(raw)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
    except BaseException as exc:
        _remove(tmp)
        _name(exc, path)
        raise
    return tmp


def _rename(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except BaseException as exc:
        _remove(tmp)
        _name(exc, path)
        raise


def _name(exc: BaseException, path: Path) -> None:
    """An OSError names the file the caller asked for, not its temporary name (an fsync's names none)."""
    if isinstance(exc, OSError):
        exc.filename, exc.filename2 = str(path), None


def _remove(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def _helper() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(4, thread_name_prefix="editbatch-write")
        return _pool


def _forget_pool() -> None:
    # A forked child has the pool but none of its threads: it would wait forever on its first write.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)
