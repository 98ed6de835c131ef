"""A coordinator (`editbatch serve --start-workers`) on its own Redis, for the job tests."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from editbatch.cluster.redis_server import RedisServer
from editbatch.redisconn import connect

from .conftest import REPO, simple_rows, write_config, write_dataset


class Service:
    def __init__(self, root: Path, *, model: dict, devices: list, jobs: dict | None = None):
        self.root = root
        self.redis_server = RedisServer(root / "redis")
        self.url = self.redis_server.start()
        self.config = write_config(root / "cluster.yaml", name="service", model=model,
                                   cluster={"broker": self.url, "devices": devices, "ready_timeout_s": 120,
                                            "output_roots": [str(root / "runs")], "input_roots": [str(root.parent)]},
                                   jobs=jobs or {})
        (root / "runs").mkdir(exist_ok=True)
        self.devices = devices
        self.proc: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []  # started by hand (editbatch worker), not by serve
        self.redis = connect(self.url)

    @property
    def env(self) -> dict:
        return {**os.environ, "EDITBATCH_BROKER": self.url}

    def start(self, timeout: float = 120, *, workers_by_hand: bool = False) -> None:
        """`serve --start-workers`, or (`workers_by_hand`) `editbatch worker --config CLUSTER --device N` each,
        then `serve` alone: the workers load the cluster config, which has no dataset."""
        if workers_by_hand:
            for i in range(len(self.devices)):
                self.start_worker(f"cpu{i}")
        log = (self.root / "serve.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "editbatch", "serve", "--config", str(self.config),
                                      *([] if workers_by_hand else ["--start-workers"]),
                                      "--log-dir", str(self.root / "logs")],
                                     env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = [json.loads(r) for r in self.redis.mget([f"editbatch:worker:cpu{i}" for i in
                                                            range(len(self.devices))]) if r]
            if len(ready) == len(self.devices) and all(r["state"] == "ready" for r in ready) \
                    and self.redis.exists("editbatch:jobs:settings"):
                return
            assert self.proc.poll() is None, self.log()
            time.sleep(0.2)
        raise AssertionError("service not ready: " + self.log())

    def start_worker(self, device: str) -> subprocess.Popen:
        log = (self.root / f"worker-{device}.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "editbatch", "worker", "--config", str(self.config),
                                 "--device", device], env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.workers.append(proc)
        return proc

    def stop(self, sig=signal.SIGTERM) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in self.workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        self.stop()
        self.redis.close()
        self.redis_server.stop()

    def log(self) -> str:
        return (self.root / "serve.log").read_text(errors="replace")[-4000:]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "editbatch", *args], capture_output=True, text=True,
                              timeout=timeout, cwd=REPO, env=self.env)

    def job_config(self, name: str, n: int, image: Path, *, seconds: float = 0.05, mode: str = "balanced",
                   model: dict | None = None, **extra) -> Path:
        dataset = write_dataset(self.root / "data" / name, simple_rows(n, image))
        model = model or {"type": "simulated", "path": "sim"}
        params = {"seconds": seconds, "call_log": str(self.root / f"{name}.calls.jsonl")} \
            if model["type"] == "simulated" else {}
        return write_config(self.root / f"{name}.yaml", name=name, dataset={"path": str(dataset)},
                            output_dir=str(self.root / "runs" / name),
                            model={**model, "params": {**params, **model.get("params", {})}},
                            schedule={"mode": mode, "task_timeout_s": 60}, **extra)


def wait_state(service: Service, job_id: str, states: tuple[str, ...], timeout: float = 90) -> dict:
    from editbatch.jobs.store import JobStore

    store = JobStore(service.redis, "editbatch")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = store.get(job_id)
        if record and record["state"] in states:
            return record
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not in {states}: {store.get(job_id)}\n{service.log()}")


@contextlib.contextmanager
def simulated_service(folder: Path, devices: tuple[str, ...] = ("cpu", "cpu"), **kwargs):
    """A started coordinator with simulated-model workers in `folder`, closed on the way out."""
    svc = Service(folder, model={"type": "simulated", "path": "sim"}, devices=list(devices), **kwargs)
    svc.start()
    try:
        yield svc
    finally:
        svc.close()


def flower_call(port: int, auth: str, path: str, body: dict | None = None):
    """One call to Flower's REST API on 127.0.0.1 with basic auth: GET, or POST of a JSON body."""
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode(),
               "Content-Type": "application/json"}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers,
                                     method="POST" if body else "GET",
                                     data=json.dumps(body).encode() if body else None)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())
