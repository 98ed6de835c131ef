"""Several jobs at once (`jobs.max_running: 2`): jobs of the workers' model run side by side; a job of another
model waits until they end, then the workers switch and it runs, never under a running job."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from editbatch.jobs.store import JobStore

from .conftest import read_jsonl, read_run
from .jobs_helpers import Service, simulated_service, wait_state


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with simulated_service(tmp_path_factory.mktemp("concurrent"), jobs={"max_running": 2}) as svc:
        yield svc


def check_all_ok(service: Service, job_id: str, name: str, n: int) -> dict:
    record = wait_state(service, job_id, ("done", "failed", "cancelled"), timeout=120)
    assert record["state"] == "done", json.dumps(record, indent=1) + service.log()
    assert record["summary"]["ok"] == n and record["counts"]["ok"] == n
    manifest, _ = read_run(service.root / "runs" / name)
    assert {r["id"] for r in manifest if r["status"] == "ok"} == {f"item-{i:03d}" for i in range(n)}
    counted = Counter(c["id"] for c in read_jsonl(service.root / f"{name}.calls.jsonl"))
    assert len(counted) == n and set(counted.values()) == {1}, counted  # each item computed once
    return record


def item_span(service: Service, name: str) -> tuple[float, float]:
    manifest, _ = read_run(service.root / "runs" / name)
    return min(r["started_at"] for r in manifest), max(r["finished_at"] for r in manifest)


def test_jobs_of_the_same_model_run_at_the_same_time(service, sample_image):
    configs = [service.job_config(name, 6, sample_image, seconds=0.4) for name in ("same-a", "same-b")]
    ids = service.cli("submit", *map(str, configs)).stdout.split()
    assert len(ids) == 2, service.log()
    store = JobStore(service.redis, "editbatch")
    both_running = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not both_running:
        both_running = all(store.get(i)["state"] == "running" for i in ids)
        time.sleep(0.05)
    assert both_running, service.log()
    a, b = (check_all_ok(service, i, name, 6) for i, name in zip(ids, ("same-a", "same-b")))
    assert a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]
    assert b["switch"]["switched"] == [] and a["switch"]["switched"] == []


def test_a_job_of_another_model_waits_for_the_running_one_then_the_workers_switch(service, sample_image):
    first = service.job_config("model-a", 6, sample_image, seconds=0.3, model={"type": "simulated", "path": "sim-a"})
    second = service.job_config("model-b", 6, sample_image, seconds=0.3, model={"type": "simulated", "path": "sim-b"})
    same = service.job_config("model-a2", 2, sample_image, seconds=0.3, model={"type": "simulated", "path": "sim-a"})
    proc = service.cli("submit", str(first), str(second), str(same))
    ids = proc.stdout.split()
    assert len(ids) == 3, proc.stderr + service.log()
    records = [check_all_ok(service, i, name, n) for i, name, n in zip(ids, ("model-a", "model-b", "model-a2"),
                                                                         (6, 6, 2))]
    a, b, a2 = records
    # One after the other, in submission order: model-a2 (the first model again) does not overtake model-b.
    assert a["finished_at"] <= b["started_at"] and b["finished_at"] <= a2["started_at"]
    spans = [item_span(service, name) for name in ("model-a", "model-b", "model-a2")]
    assert spans[0][1] <= spans[1][0] and spans[1][1] <= spans[2][0], spans
    assert b["switch"]["switched"] == ["cpu0", "cpu1"] and a2["switch"]["switched"] == ["cpu0", "cpu1"]
    workers = json.loads((service.root / "runs" / "model-b" / "workers.json").read_text())
    assert {w["model"]["path"] for w in workers} == {"sim-b"}
    log = (service.root / "serve.log").read_text()
    assert f"job {ids[1]}: waits for {ids[0]} to end" in log, service.log()
    assert f"job {ids[1]}: switched cpu0, cpu1 to simulated (sim-b)" in log, service.log()
    print(f"model switch between jobs: {b['switch']['seconds']:.2f}s; "
          f"gap between jobs: {b['started_at'] - a['finished_at']:.2f}s")
