"""Flower, pointed at a cluster, lists our workers and sees the tasks of a run."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

from editbatch.cluster.redis_server import free_port

from .conftest import REPO


def get(url: str, auth: str):
    request = urllib.request.Request(url, headers={"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_flower_shows_workers_and_tasks(sim_cluster, sim_run):
    port = free_port()
    env = {**os.environ, "EDITBATCH_BROKER": sim_cluster["url"]}
    flower = subprocess.Popen([sys.executable, "-m", "celery", "-A", "editbatch.celery_app", "flower",
                               f"--port={port}", "--address=127.0.0.1", "--basic-auth=ops:secret"],
                              env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        host = socket.gethostname()
        workers = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not {f"cpu{i}@{host}" for i in range(3)} <= set(workers):
            try:
                workers = get(f"{base}/api/workers?refresh=1", "ops:secret")
            except OSError:
                time.sleep(0.5)
        assert {f"cpu{i}@{host}" for i in range(3)} <= set(workers)
        proc, manifest, _ = sim_run(6, mode="balanced")
        assert proc.returncode == 0
        tasks = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(tasks) < 6:
            tasks = {k: v for k, v in get(f"{base}/api/tasks", "ops:secret").items()
                     if v.get("name") == "editbatch.edit" and v.get("state") == "SUCCESS"}
            time.sleep(0.5)
        assert len(tasks) >= 6
        assert {v["worker"] for v in tasks.values()} <= {f"cpu{i}@{host}" for i in range(3)}
    finally:
        flower.terminate()
        flower.wait(10)
