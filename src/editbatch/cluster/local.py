"""`cluster.broker: auto`: a private Redis and one `editbatch worker` process per device.

Once the run is under way (`watch()`), a monitor thread keeps the cluster
whole through the night: a worker that exits (killed, crashed, retired
after CUDA errors, ended by its watchdog) has its presence record removed
at once, so the producer reroutes its items within seconds, and is started
again up to `restarts` times; it reloads through the same load slots and
rejoins. A worker that is alive but silent (its presence record expired:
stopped, or hung outside Python) is killed first, so it cannot wake up
later and race its replacement. A Redis that exits is started again on the
same port with its append-only file.

Everything started here is stopped by `stop()`, which the producer calls in a
`finally`, so a finished, failed or interrupted run leaves no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from .. import keys, liveness, redisconn
from ..devices import Device
from ..errors import ClusterError
from .processes import child_preexec, stop_processes
from .redis_server import RedisServer

MONITOR_EVERY_S = 0.5
JUDGE = "judge"  # the judge worker's name among the workers (its log: worker-judge.log)


class LocalCluster:
    def __init__(self, config_path: Path, devices: list[Device], log_dir: Path, *, namespace: str = "editbatch",
                 restarts: int = 0, say: Callable[[str], None] | None = None, broker: str | None = None,
                 judge: bool = False):
        """`broker`: workers on that Redis (`editbatch serve`); None starts a private one.
        `judge`: also a judge worker (threads, no model) for the config's evaluate.judge."""
        self.config_path = config_path
        self.devices = {d.queue: d for d in devices}
        self.log_dir = log_dir
        self.namespace = namespace
        self.judges = [JUDGE] if judge else []
        self.restarts_left = {q: restarts for q in [*self.devices, *self.judges]}
        self.say = say or (lambda text: None)
        self.broker = broker
        # Its log beside the workers' logs; nothing in the temp folder.
        self.redis = RedisServer(log_dir) if broker is None else None
        self.workers: dict[str, subprocess.Popen] = {}
        self.loading: set[str] = set()  # restarted workers that have not announced ready yet
        self.seen_ready: set[str] = set()
        self.silent_since: dict[str, float] = {}
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self.url = ""

    def start(self) -> str:
        self.url = self.broker or self.redis.start()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for queue in [*self.devices, *self.judges]:
            self._start_worker(queue)
        self._write_pids()
        return self.url

    def _start_worker(self, queue: str) -> None:
        env = {**os.environ, "EDITBATCH_BROKER": self.url, "PYTHONUNBUFFERED": "1"}
        log = (self.log_dir / f"worker-{queue}.log").open("ab")
        command = (["judge-worker", "--config", str(self.config_path)] if queue == JUDGE else
                   ["worker", "--config", str(self.config_path), "--device", self.devices[queue].spec])
        self.workers[queue] = subprocess.Popen(
            [sys.executable, "-m", "editbatch", *command],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=child_preexec)
        log.close()

    def _write_pids(self) -> None:
        # Which processes belong to this run, for operators (and for checking none outlives it).
        (self.log_dir / "cluster.json").write_text(json.dumps({
            "redis_pid": self.redis.process.pid if self.redis else None,
            "redis_port": self.redis.port if self.redis else None,
            "workers": {q: p.pid for q, p in self.workers.items()}}, indent=2) + "\n")

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

    # ------------------------------------------------------------ keeping it whole

    def watch(self) -> None:
        """Start the monitor: from now on, exited workers are restarted and a crashed Redis comes back."""
        self._monitor = threading.Thread(target=self._run_monitor, name="editbatch-cluster-monitor", daemon=True)
        self._monitor.start()

    def restarting(self) -> bool:
        return bool(self.loading)

    def _run_monitor(self) -> None:
        client = redisconn.connect(self.url)
        while not self._stop.wait(MONITOR_EVERY_S):
            try:
                self._keep_redis()
                self._keep_workers(client)
            except Exception as exc:  # noqa: BLE001 - the monitor must outlive any one bad turn
                self.say(f"[editbatch] cluster monitor: {exc.__class__.__name__}: {exc}")

    def _keep_redis(self) -> None:
        if self.redis is None or self.redis.process.poll() is None or self._stop.is_set():
            return
        self.say(f"[editbatch] private Redis exited (code {self.redis.process.returncode}); starting it again")
        if self.redis.restart():
            self._write_pids()
        else:
            self.say("[editbatch] private Redis did not come back; retrying")

    def _keep_workers(self, client) -> None:
        try:
            seen = liveness.look(client, self.namespace, self.devices)
        except redisconn.TRANSIENT:
            seen = None  # Redis away: judge only by the processes
        now = time.monotonic()
        for queue, proc in list(self.workers.items()):
            if self._stop.is_set():
                return
            if proc.poll() is not None:
                self._replace(queue, proc.returncode, client)
                continue
            if seen is None or queue not in seen:
                continue  # a judge worker: its process is what this monitor watches
            if seen[queue].serving:
                self.loading.discard(queue)
                self.seen_ready.add(queue)
                self.silent_since.pop(queue, None)
            elif queue in self.seen_ready and seen[queue].silent:
                since = self.silent_since.setdefault(queue, now)
                if now - since > MONITOR_EVERY_S * 3:  # gone for a while, yet its process lives
                    self.say(f"[editbatch] {queue} stopped answering ({seen[queue].gone()}): killing it")
                    proc.kill()

    def _replace(self, queue: str, code: int | None, client) -> None:
        try:
            client.delete(keys.worker(self.namespace, queue))  # the producer reroutes at its next check
        except redisconn.TRANSIENT:
            pass
        self.seen_ready.discard(queue)
        self.silent_since.pop(queue, None)
        left = self.restarts_left[queue]
        if left <= 0:
            self.loading.discard(queue)
            del self.workers[queue]
            self.say(f"[editbatch] worker {queue} exited (code {code}); no restarts left (cluster.restarts)")
            self._write_pids()
            return
        self.restarts_left[queue] = left - 1
        self.say(f"[editbatch] worker {queue} exited (code {code}); starting it again "
                 f"({left - 1} restart(s) left)")
        self._start_worker(queue)
        if queue in self.devices:
            self.loading.add(queue)
        self._write_pids()

    # ------------------------------------------------------------ stopping

    def stop(self, *, interrupted: bool = False) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(10)
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
