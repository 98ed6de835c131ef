"""`cluster.broker: auto`: a private Redis and one `editbatch worker` process per device.

Everything started here is stopped by `stop()`, which the producer calls in a
`finally`, so a finished, failed or interrupted run leaves no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from ..devices import Device
from ..errors import ClusterError
from .processes import child_preexec, stop_processes
from .redis_server import RedisServer


class LocalCluster:
    def __init__(self, config_path: Path, devices: list[Device], log_dir: Path, *, broker: str | None = None):
        """`broker`: workers on that Redis (`editbatch serve`); None starts a private one."""
        self.config_path = config_path
        self.devices = devices
        self.log_dir = log_dir
        self.broker = broker
        # Its log beside the workers' logs; nothing in the temp folder.
        self.redis = RedisServer(log_dir) if broker is None else None
        self.workers: dict[str, subprocess.Popen] = {}

    def start(self) -> str:
        url = self.broker or self.redis.start()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for device in self.devices:
            env = {**os.environ, "EDITBATCH_BROKER": url, "PYTHONUNBUFFERED": "1"}
            log = (self.log_dir / f"worker-{device.queue}.log").open("ab")
            self.workers[device.queue] = subprocess.Popen(
                [sys.executable, "-m", "editbatch", "worker", "--config", str(self.config_path),
                 "--device", device.spec],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=child_preexec)
            log.close()
        # Which processes belong to this run, for operators (and for checking none outlives it).
        (self.log_dir / "cluster.json").write_text(json.dumps({
            "redis_pid": self.redis.process.pid if self.redis else None,
            "redis_port": self.redis.port if self.redis else None,
            "workers": {q: p.pid for q, p in self.workers.items()}}, indent=2) + "\n")
        return url

    def check_alive(self) -> None:
        """Raise if a worker process exited, quoting the end of its log."""
        for queue, proc in self.workers.items():
            if proc.poll() is not None:
                tail = self._log_tail(queue)
                raise ClusterError(f"worker {queue} exited with code {proc.returncode} before it was ready"
                                   + (f": {tail}" if tail else f" (log: {self.log_dir / f'worker-{queue}.log'})"))

    def _log_tail(self, queue: str) -> str:
        path = self.log_dir / f"worker-{queue}.log"
        try:
            lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        marked = [ln for ln in lines if "editbatch worker" in ln or "Error" in ln]
        return (marked or lines or [""])[-1].strip()

    def stop(self, *, interrupted: bool = False) -> None:
        # Warm shutdown lets a running task finish; when interrupted, stop at once.
        first = signal.SIGQUIT if interrupted else signal.SIGTERM
        try:
            stop_processes(list(self.workers.values()), first, grace_s=15.0)
        finally:
            if self.redis is not None:
                self.redis.stop()

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.stop(interrupted=exc_type is KeyboardInterrupt)
