"""One run per output folder: an exclusive lock on `<folder>/.editbatch.lock` for the run's whole life.

The lock is the kernel's (flock), so it goes with its holder however the
holder ends (exit, Ctrl-C, SIGKILL, a crash): a crashed run never leaves
the folder locked. The file also names the holder (run id, pid, host, when),
which is what a refused second run prints. On NFS, Linux maps flock to the
server's byte-range locks, so runs on two hosts exclude each other too.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from .. import layout
from ..errors import ConfigError


class FolderLock:
    def __init__(self, folder: Path):
        self.path = folder / layout.LOCK
        self._fd: int | None = None

    def acquire(self, source: str, run_id: str) -> None:
        """Hold the folder, or raise ConfigError naming the run that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.pread(fd, 4096, 0))
            os.close(fd)
            raise ConfigError(source, "output_dir", f"{self.path.parent} is in use by {holder}; wait for it to "
                                                    f"end or stop it (editbatch cancel {self.path.parent})") from None
        info = json.dumps({"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(),
                           "since": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass  # a full disk cannot stop a release: closing drops the lock
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def _describe(raw: bytes) -> str:
    try:
        info = json.loads(raw.decode())
        since = time.strftime("%H:%M:%S", time.localtime(info["since"]))
        return f"run {info['run_id']} (pid {info['pid']} on {info['host']}, since {since})"
    except (ValueError, KeyError, TypeError):
        return "another run"
