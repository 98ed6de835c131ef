"""A job's whole life on a service whose workers were started by hand from the cluster config (no dataset):
submit, an existing id, cancel and resume on its folder, the list, prune; the coordinator's log of it all.

Costs about 18 s on 2 cores (two workers and a coordinator start once; a dozen short jobs).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest
import yaml

from editbatch import keys
from editbatch.jobs.store import JobStore

from .conftest import REPO, read_jsonl, read_run, write_config
from .jobs_helpers import Service, wait_state


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("life"), model={"type": "simulated", "path": "sim"},
                  devices=["cpu", "cpu"])
    svc.start(workers_by_hand=True)
    try:
        yield svc
    finally:
        svc.close()


def test_workers_started_by_hand_from_the_cluster_config_run_a_job(service, sample_image):
    assert "dataset" not in service.config.read_text()
    proc = service.cli("submit", str(service.job_config("hand", 4, sample_image)), "--wait")
    assert proc.returncode == 0 and "done: 4 ok" in proc.stdout, proc.stdout + proc.stderr + service.log()
    # Each worker published the roots it enforces: the cluster config's.
    record = json.loads(service.redis.get("editbatch:worker:cpu0"))
    assert record["output_roots"] == [str((service.root / "runs").resolve())]


def test_submit_of_an_existing_id_says_what_that_job_is(service, sample_image):
    config = str(service.job_config("twice", 2, sample_image))
    assert service.cli("submit", config, "--id", "twice-1", "--wait").returncode == 0
    again = service.cli("submit", config, "--id", "twice-1")
    assert again.returncode == 2
    assert "--id: job twice-1 exists and ended done" in again.stderr and "--resume" in again.stderr
    assert len(read_jsonl(service.root / "twice.calls.jsonl")) == 2  # nothing ran again


def test_a_cancelled_job_resumed_finishes_on_its_folder_reusing_finished_items(service, sample_image):
    config = str(service.job_config("resumed", 8, sample_image, seconds=1.0))
    assert service.cli("submit", config, "--id", "resumed-1").returncode == 0
    store = JobStore(service.redis, "editbatch")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and ((store.get("resumed-1") or {}).get("counts") or {}).get("ok", 0) < 2:
        time.sleep(0.1)
    assert service.cli("cancel", "resumed-1").returncode == 0
    cancelled = wait_state(service, "resumed-1", ("cancelled",))
    done_before = cancelled["counts"]["ok"]
    assert 2 <= done_before < 8
    # A running or queued job is not resumed; an ended one is queued again and finishes on its folder.
    resumed = service.cli("submit", config, "--id", "resumed-1", "--resume", "--wait")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr + service.log()
    assert "(cancelled) queued again" in resumed.stderr and "done: 8 ok" in resumed.stdout
    manifest, summary = read_run(service.root / "runs" / "resumed")
    assert summary["ok"] == 8 and summary["reused"] >= done_before
    calls = Counter(c["id"] for c in read_jsonl(service.root / "resumed.calls.jsonl"))
    assert len(calls) == 8 and sum(calls.values()) <= 8 + 2  # at most the edits cut by the cancel, again
    # `jobs resume ID` of a done job: nothing left to compute, it ends done again.
    assert service.cli("jobs", "resume", "resumed-1").returncode == 0
    assert wait_state(service, "resumed-1", ("done",), timeout=60)["summary"]["reused"] == 8


def test_the_job_list_has_a_header_fits_uuids_and_names_failed_and_not_run(service, sample_image):
    job_id = str(uuid.uuid4())
    config = service.job_config("listed", 3, sample_image)
    data = yaml.safe_load(config.read_text())
    data["model"]["params"]["fail_ids"] = ["item-001"]
    data["schedule"]["retries"] = 0
    config.write_text(yaml.safe_dump(data))
    proc = service.cli("submit", str(config), "--id", job_id, "--wait")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = service.cli("jobs").stdout.splitlines()
    assert lines[0].split()[:8] == ["JOB", "STATE", "PRIO", "OK", "FAILED", "INVALID", "NOT", "RUN"]
    row = next(line for line in lines if line.startswith(job_id))
    assert row.split()[1:8] == ["done", "0", "2", "1", "0", "0", "3"]
    # Columns line up whatever the length of the ids.
    assert len({line.index("STATE") if i == 0 else None for i, line in enumerate(lines)} - {None}) == 1
    assert row.index("done") == lines[0].index("STATE")


def test_prune_deletes_the_records_of_jobs_that_ended_long_ago(service):
    store = JobStore(service.redis, "editbatch")
    # A record that ended in 1970, written as the store keeps it (never queued: the coordinator leaves it be).
    fields = {"id": "old-1", "state": "failed", "config": {"name": "old"}, "submitted_at": 0.5, "finished_at": 1.0}
    service.redis.hset(keys.job("editbatch", "old-1"), mapping={k: json.dumps(v) for k, v in fields.items()})
    service.redis.zadd(keys.jobs_all("editbatch"), {"old-1": 0.5})
    bad_age = service.cli("jobs", "prune", "--older-than", "a while")
    assert bad_age.returncode == 2 and "--older-than: 'a while' is not an age" in bad_age.stderr
    proc = service.cli("jobs", "prune", "--older-than", "30d")
    assert proc.returncode == 0 and "deleted 1 ended job record(s): old-1" in proc.stdout
    assert store.get("old-1") is None and "old-1" not in service.cli("jobs").stdout
    assert store.get("twice-1") is not None  # recent ones stay


def test_a_job_outside_the_roots_is_refused_at_submission(service, sample_image, tmp_path):
    config = service.job_config("outside", 2, sample_image)
    config.write_text(config.read_text().replace(str(service.root / "runs" / "outside"), str(tmp_path / "x")))
    proc = service.cli("submit", str(config))
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"{config}: output_dir: {tmp_path / 'x'} is outside the service's output roots" in proc.stderr


def test_a_job_outside_a_live_workers_roots_is_refused_at_submission(service, sample_image):
    # cpu1's record as a narrower worker would publish it; the worker is paused meanwhile, so that its
    # heartbeat does not write its own record back (it is not written off: that takes 6 s).
    record = json.loads(service.redis.get("editbatch:worker:cpu1"))
    narrow = str((service.root / "runs" / "only-this").resolve())
    service.workers[1].send_signal(signal.SIGSTOP)
    try:
        service.redis.set("editbatch:worker:cpu1", json.dumps({**record, "output_roots": [narrow]}), ex=6)
        proc = service.cli("submit", str(service.job_config("narrow", 2, sample_image)))
    finally:
        service.redis.set("editbatch:worker:cpu1", json.dumps(record), ex=6)  # until its next heartbeat
        service.workers[1].send_signal(signal.SIGCONT)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout
    assert "output_dir: " in proc.stderr and "is outside the roots of worker(s) cpu1 (reads under " in proc.stderr
    assert f"writes under {narrow})" in proc.stderr


def test_the_coordinator_refuses_to_start_beyond_its_workers_roots(service, tmp_path):
    wider = write_config(tmp_path / "wider.yaml", name="wider", model={"type": "simulated", "path": "sim"},
                         cluster={"broker": service.url, "devices": ["cpu", "cpu"],
                                  "output_roots": [str(service.root)], "input_roots": [str(service.root.parent)]},
                         jobs={"queue": "jobs-wider"})
    proc = subprocess.run([sys.executable, "-m", "editbatch", "serve", "--config", str(wider)], capture_output=True,
                          text=True, timeout=60, cwd=REPO, env=service.env)
    assert proc.returncode == 2, proc.stderr
    assert "worker(s) cpu0 (reads under" in proc.stderr and "cpu1 (reads under" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_worker_config_with_several_problems_names_every_one(tmp_path):
    bad = write_config(tmp_path / "bad.yaml", model={"type": "simulated", "path": "sim"},
                       cluster={"load_concurrency": 0, "output_roots": ["/tmp"], "input_roots": ["/tmp"]},
                       schedule={"mdoe": "sync", "retries": -1})
    proc = subprocess.run([sys.executable, "-m", "editbatch", "worker", "--config", str(bad), "--device", "cpu0",
                           "--broker", "redis://127.0.0.1:1/0"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith(f"editbatch: error: {bad}: schedule.mdoe: unknown key")
    assert "cluster.load_concurrency: " in line and "dataset" not in line


def test_the_coordinator_log_names_each_acceptance_refusal_switch_cancel_and_end(service, sample_image):
    other = service.job_config("other-model", 2, sample_image, model={"type": "simulated", "path": "sim-b"})
    assert service.cli("submit", str(other), "--id", "switch-1", "--wait").returncode == 0
    # A config that only the coordinator sees (sent past the CLI's checks, as a Celery client could).
    bad = yaml.safe_load(service.job_config("bad", 2, sample_image).read_text())
    bad["schedule"]["mdoe"] = "sync"
    JobStore(service.redis, "editbatch").create("bad-1", bad, max_queued=100)
    wait_state(service, "bad-1", ("failed",))
    log = (service.root / "serve.log").read_text()
    # The cancel is the one of the resume test above (a module shares one service).
    for expected in ("job switch-1: accepted (other-model, simulated", "job switch-1: switched cpu0, cpu1 to simulated",
                     "job switch-1: done (2 ok, 0 failed, 0 invalid, 0 not_run of 2)",
                     "job bad-1: refused: job bad-1: schedule.mdoe: unknown key",
                     "job resumed-1: cancelled (", "job twice-1: done (2 ok"):
        assert expected in log, expected + "\n" + log[-3000:]
