"""Jobs end to end: `editbatch serve` with its workers on a real Redis; submit, follow, cancel, restart."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

import pytest

from editbatch import keys
from editbatch.jobs.store import JobStore, QueueFull
from editbatch.redisconn import connect

from .conftest import read_jsonl, read_run
from .jobs_helpers import simulated_service, wait_state


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with simulated_service(tmp_path_factory.mktemp("service")) as svc:
        yield svc


def test_submit_wait_status_and_list_from_the_cli(service, sample_image):
    configs = [service.job_config(f"cli-{k}", 6, sample_image) for k in range(2)]
    submitted_at = time.time()
    proc = service.cli("submit", *map(str, configs))
    assert proc.returncode == 0, proc.stderr
    ids = proc.stdout.split()
    assert len(ids) == 2
    waited = service.cli("wait", ids[1])
    assert waited.returncode == 0 and "done: 6 ok, 0 failed, 0 invalid" in waited.stdout, waited.stdout + service.log()
    status = json.loads(service.cli("status", ids[0], "--json").stdout)
    # The producer's counts pass through as they come (other keys, such as not_run, may join these).
    assert status["state"] == "done" and status["counts"].items() >= {"total": 6, "ok": 6, "failed": 0,
                                                                       "invalid": 0, "pending": 0}.items()
    assert status["summary"]["ok"] == 6 and status["started_at"] >= status["submitted_at"]
    manifest, summary = read_run(service.root / "runs" / "cli-0")
    assert summary["ok"] == 6
    latency = min(r["started_at"] for r in manifest) - submitted_at
    print(f"submit -> first item started with warm workers: {latency:.2f}s")
    assert latency < 5
    text = service.cli("status", ids[0]).stdout
    assert f"job {ids[0]} (cli-0): done" in text and "items: 6/6 done: 6 ok" in text
    listed = service.cli("jobs", "--state", "done").stdout
    assert all(i in listed for i in ids)
    # No model switch was needed: the workers' model was loaded once, at start.
    assert status["switch"]["switched"] == []


def test_same_id_twice_is_one_job_and_priority_goes_first(service, sample_image):
    # The blocker outlasts the three submits below (each a CLI start, seconds on a loaded machine): low-1 is
    # still queued when it is submitted again.
    slow = service.job_config("blocker", 4, sample_image, seconds=4.0)
    low = service.job_config("low", 2, sample_image)
    high = service.job_config("high", 2, sample_image)
    assert service.cli("submit", str(slow), "--id", "blocker-1").stdout.strip() == "blocker-1"
    wait_state(service, "blocker-1", ("running",))
    assert service.cli("submit", str(low), "--id", "low-1").returncode == 0
    assert service.cli("submit", str(high), "--id", "high-1", "--priority", "5").returncode == 0
    again = service.cli("submit", str(low), "--id", "low-1")
    assert again.returncode == 0 and again.stdout.strip() == "low-1"
    assert service.cli("wait", "low-1").returncode == 0
    store = JobStore(service.redis, "editbatch")
    low_r, high_r = store.get("low-1"), store.get("high-1")
    assert high_r["started_at"] < low_r["started_at"]  # submitted later, ran first
    assert sum(1 for r in store.list() if r["id"] == "low-1") == 1
    assert len(read_jsonl(service.root / "low.calls.jsonl")) == 2  # ran once


def test_cancel_stops_one_job_and_a_queued_one_never_starts(service, sample_image):
    # Edits long enough that the cancel lands while the second pair runs, however loaded the machine.
    long = service.job_config("long", 12, sample_image, seconds=2.0)
    queued = service.job_config("queued", 3, sample_image)
    after = service.job_config("after", 3, sample_image)
    ids = service.cli("submit", str(long), str(queued)).stdout.split()
    wait_state(service, ids[0], ("running",))
    calls = service.root / "long.calls.jsonl"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (calls.exists() and len(read_jsonl(calls)) >= 3):
        time.sleep(0.1)
    assert "cancelled before it started" in service.cli("cancel", ids[1]).stdout
    proc = service.cli("cancel", ids[0])
    assert proc.returncode == 0 and "cancel requested" in proc.stdout, proc.stderr
    record = wait_state(service, ids[0], ("cancelled",), timeout=30)
    out = service.root / "runs" / "long"
    kept = {p.name for p in (out / "records").glob("*.json")}
    assert record["counts"]["ok"] == len(kept) < 12
    time.sleep(2.5)  # a running edit would have finished by now
    assert {p.name for p in (out / "records").glob("*.json")} == kept
    assert wait_state(service, ids[1], ("cancelled",))["started_at"] is None
    assert not (service.root / "runs" / "queued").exists()
    assert service.cli("wait", ids[0]).returncode == 130
    # The workers keep serving the next job.
    nxt = service.cli("submit", str(after), "--wait")
    assert nxt.returncode == 0, nxt.stdout + nxt.stderr


def test_a_job_outside_the_roots_or_with_a_bad_config_fails_with_one_line(service, sample_image, tmp_path):
    from editbatch.client import Client, JobFailed, JobRefused

    client = Client(service.url)
    config = {"name": "outside", "dataset": {"path": str(service.root / "data" / "cli-0" / "dataset.jsonl")},
              "output_dir": str(tmp_path / "elsewhere"), "model": {"type": "simulated", "path": "sim"}}
    # The client refuses it against the roots the coordinator published; nothing is queued.
    with pytest.raises(JobRefused, match=r"^output_dir: .* is outside the service's output roots"):
        client.submit(config, job_id="outside-1")
    assert client.store.get("outside-1") is None
    # Queued past the client (an older client, a raw store write), the coordinator refuses it with one line.
    client.store.create("outside-2", config)
    with pytest.raises(JobFailed, match=r"output_dir: .* is outside the coordinator's output roots"):
        client.job("outside-2").wait(timeout=30)
    assert not (tmp_path / "elsewhere").exists()
    bad = client.submit({**config, "output_dir": str(service.root / "runs" / "bad"), "schedule": {"mdoe": "sync"}})
    with pytest.raises(JobFailed, match=r"^job \w+: schedule.mdoe: unknown key; did you mean 'mode'\?$"):
        bad.wait(timeout=30)
    client.close()


def test_the_python_client_submits_follows_and_lists(service, sample_image):
    import yaml

    from editbatch.client import Client

    client = Client(service.url)
    config = yaml.safe_load(service.job_config("py", 4, sample_image).read_text())
    job = client.submit(config, job_id="py-1")
    summary = job.wait(timeout=60)
    assert summary["ok"] == 4 and job.status()["state"] == "done"
    assert "py-1" in {r["id"] for r in client.list_jobs("done")}
    client.close()


def test_admission_limit_refuses_a_job_beyond_max_queued(service):
    redis = connect(service.url)
    store = JobStore(redis, "admission-test")
    store.create("a", {}, max_queued=2)
    store.create("b", {}, max_queued=2)
    assert store.create("a", {}, max_queued=2) is False  # the same id again: nothing new
    with pytest.raises(QueueFull, match="queue is full"):
        store.create("c", {}, max_queued=2)
    redis.close()


def test_a_job_through_flowers_rest_api(service, sample_image):
    """POST send-task with basic auth, then follow the task's info and result, as the README's curl does."""
    import base64
    import os
    import subprocess
    import sys
    import urllib.request

    import yaml

    from editbatch.cluster.redis_server import free_port

    from .conftest import REPO

    port = free_port()
    flower = subprocess.Popen([sys.executable, "-m", "celery", "-A", "editbatch.celery_app", "flower",
                               f"--port={port}", "--address=127.0.0.1", "--basic-auth=ops:secret"],
                              env={**os.environ, "EDITBATCH_BROKER": service.url}, cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    auth = {"Authorization": "Basic " + base64.b64encode(b"ops:secret").decode(), "Content-Type": "application/json"}

    def call(path, body=None):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=auth,
                                         method="POST" if body else "GET",
                                         data=json.dumps(body).encode() if body else None)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if any(name.startswith("jobs@") for name in call("/api/workers?refresh=1")):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        config = yaml.safe_load(service.job_config("http", 6, sample_image, seconds=0.6).read_text())
        sent = call("/api/task/send-task/editbatch.job", {"kwargs": {"config": config}})
        job_id = sent["task-id"]
        # The task only queues the job: its message is acknowledged at once, long before the job ends.
        assert wait_state(service, job_id, ("running",))["via"] == "celery"
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            held = [json.loads(m)[0]["headers"]["task"] for m in service.redis.hvals("unacked")]
            if "editbatch.job" not in held:
                break
            time.sleep(0.02)
        assert "editbatch.job" not in held and service.redis.llen("jobs") == 0, held
        assert JobStore(service.redis, "editbatch").get(job_id)["state"] == "running"
        states, result = set(), None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                info = call(f"/api/task/info/{job_id}")
                states.add(info.get("state"))
            except urllib.error.HTTPError:
                pass  # not seen by Flower yet
            result = call(f"/api/task/result/{job_id}")
            if result.get("state") == "SUCCESS":
                break
            time.sleep(0.2)
        assert result["state"] == "SUCCESS" and result["result"]["ok"] == 6 and result["result"]["job"] == job_id
        assert "PROGRESS" in states or "STARTED" in states, states
        assert JobStore(service.redis, "editbatch").get(job_id)["via"] == "celery"
    finally:
        flower.terminate()
        flower.wait(10)


def test_jobs_survive_a_coordinator_killed_mid_run(service, sample_image):
    """SIGKILL the coordinator (its workers finish their edit and go) with one job running and one queued, start
    it again: the running job resumes on its folder once its lease runs out, then the queued one runs."""
    config = service.job_config("restart", 10, sample_image, seconds=0.5)
    waiting = service.job_config("restart-queued", 4, sample_image)
    job_id, queued_id = service.cli("submit", str(config), str(waiting)).stdout.split()
    calls = service.root / "restart.calls.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (calls.exists() and len(read_jsonl(calls)) >= 4):
        time.sleep(0.1)
    service.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    assert wait_state(service, job_id, ("running",))["attempts"] == 1
    assert wait_state(service, queued_id, ("queued",))
    service.start()
    record = wait_state(service, job_id, ("done",), timeout=120)
    print(f"resumed {record['finished_at'] - record['started_at']:.1f}s after it first started; "
          f"killed to done: {time.monotonic() - killed_at:.1f}s")
    assert record["attempts"] == 2 and record["summary"]["ok"] == 10 and record["summary"]["reused"] >= 3
    counted = Counter(c["id"] for c in read_jsonl(calls))
    again = sorted(i for i, c in counted.items() if c > 1)
    print(f"computed twice: {again}")
    # The workers outlive the coordinator long enough to finish their edit (SIGTERM from the kernel when their
    # parent dies): what they finished is reused, nothing is computed twice.
    assert len(counted) == 10 and again == [], counted
    queued = wait_state(service, queued_id, ("done",), timeout=60)
    assert queued["attempts"] == 1 and queued["summary"]["ok"] == 4 and queued["started_at"] >= record["finished_at"]
    assert sorted(Counter(c["id"] for c in read_jsonl(service.root / "restart-queued.calls.jsonl")).values()) \
        == [1, 1, 1, 1]


def test_a_coordinator_stopped_with_sigterm_lets_go_and_the_next_resumes_at_once(service, sample_image):
    config = service.job_config("sigterm", 10, sample_image, seconds=0.5)
    job_id = service.cli("submit", str(config)).stdout.strip()
    calls = service.root / "sigterm.calls.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (calls.exists() and len(read_jsonl(calls)) >= 4):
        time.sleep(0.1)
    stopping = time.monotonic()
    service.stop(signal.SIGTERM)
    print(f"SIGTERM to exit: {time.monotonic() - stopping:.1f}s")
    assert service.proc.returncode == 0, service.log()
    assert "left running, to be resumed" in service.log()
    assert wait_state(service, job_id, ("running",))["attempts"] == 1
    assert not service.redis.exists(f"editbatch:job-lease:{job_id}")  # let go: no lease to wait for
    service.start()
    started = time.monotonic()
    record = wait_state(service, job_id, ("done",), timeout=60)
    print(f"start to done: {time.monotonic() - started:.1f}s")
    assert record["attempts"] == 2 and record["summary"]["ok"] == 10 and record["summary"]["reused"] >= 3
    assert time.monotonic() - started < keys.JOB_LEASE_TTL_S
    counted = Counter(c["id"] for c in read_jsonl(calls))
    # The stopped run's edits stop at their next step: those (one per device) run again, nothing else.
    again = [i for i, c in counted.items() if c > 1]
    print(f"computed twice: {again}")
    assert len(counted) == 10 and len(again) <= len(service.devices) and set(counted.values()) <= {1, 2}
