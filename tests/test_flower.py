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

from redis import Redis

from editbatch.cluster.redis_server import free_port

from .conftest import REPO


def get(url: str, auth: str):
    token = base64.b64encode(auth.encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": "Basic " + token})
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
        # The session's workers are shared: read only what their logs gain during this run.
        log_files = sorted(sim_cluster["cluster"].log_dir.glob("worker-*.log"))
        log_start = {p: p.stat().st_size for p in log_files}
        proc, manifest, summary = sim_run(6, mode="balanced", params={"seconds": 0.05, "fail_ids": ["item-004"]},
                                         schedule={"retries": 0})
        assert proc.returncode == 1 and summary["failed"] == 1
        run = f"run={summary['run_id']}"
        # A copy held behind a running edit may be taken back for an idle device (schedule.take_back): its
        # holder then skips it, and Flower shows that copy as a SUCCESS whose result says so. The producer
        # names each one it took back.
        taken_back = (proc.stdout + proc.stderr).count(": taken back from ")
        tasks, copies = {}, {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (len(tasks) < 6 or len(copies) < taken_back):
            ended = {k: v for k, v in get(f"{base}/api/tasks", "ops:secret").items()
                     if v.get("name") == "editbatch.edit" and run in (v.get("args") or "")
                     and v.get("state") in ("SUCCESS", "FAILURE")}
            copies = {k: v for k, v in ended.items() if "'taken_back': True" in (v.get("result") or "")}
            tasks = {k: v for k, v in ended.items() if k not in copies}
            time.sleep(0.5)
        assert len(tasks) == 6 and len(copies) == taken_back
        assert {v["worker"] for v in tasks.values()} <= {f"cpu{i}@{host}" for i in range(3)}
        # The task list names the item; a failed item is a failed task, with its error.
        by_item = {v["args"].split()[0].removeprefix("item="): v for v in tasks.values()}
        assert set(by_item) == {r["id"] for r in manifest}
        assert by_item["item-004"]["state"] == "FAILURE"
        assert "simulated failure" in by_item["item-004"]["exception"]
        assert {v["state"] for k, v in by_item.items() if k != "item-004"} == {"SUCCESS"}
        # Failing the task still acknowledges its message (acks_late): nothing of this run waits to be
        # redelivered (the session's cluster may still be acknowledging other tests' leftover tasks).
        redis = Redis.from_url(sim_cluster["url"])
        assert [m for m in map(unacked_payload, redis.hvals("unacked")) if m.get("run") == summary["run_id"]] == []
        redis.close()
        # ...and Celery adds no traceback of its own to the task's one logged error.
        logs = "".join(p.read_bytes()[log_start[p]:].decode(errors="replace") for p in log_files)
        assert "item-004 failed: RuntimeError: simulated failure" in logs
        assert "raised unexpected" not in logs and "ItemFailed" not in logs
    finally:
        flower.terminate()
        flower.wait(10)


def unacked_payload(raw: bytes) -> dict:
    """The editbatch.edit payload of one message in Kombu's unacked hash ([envelope, exchange, routing key])."""
    envelope = json.loads(raw)[0]
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = json.loads(body)[0]
    return args[0] if args and isinstance(args[0], dict) else {}
