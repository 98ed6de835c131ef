"""Nothing lost, nothing computed twice: resume, retry, refusals, retries, cancel and poison items.

Every model call is logged by the simulated model (`call_log`), so the tests
count what was computed, per item id, across runs and producer deaths.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

import pytest

from .conftest import REPO, read_jsonl, read_run, run_cli, simple_rows, wait_gone, write_config, write_dataset


def config_for(tmp_path, image, *, n=24, broker="auto", devices=("cpu", "cpu"), mode="sync", params=None,
               schedule=None, name="c.yaml"):
    dataset = write_dataset(tmp_path / "data", simple_rows(n, image))
    calls = tmp_path / "calls.jsonl"
    return write_config(tmp_path / name, name="resume", dataset={"path": str(dataset)},
                        output_dir=str(tmp_path / "out"),
                        model={"type": "simulated", "path": "sim",
                               "params": {"seconds": 0.3, "call_log": str(calls), **(params or {})}},
                        cluster={"broker": broker, "devices": list(devices), "ready_timeout_s": 120},
                        schedule={"mode": mode, "task_timeout_s": 60, **(schedule or {})}), calls


def wait_for_lines(path, count, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (path.exists() and path.read_text().count("\n") >= count):
        time.sleep(0.05)


def test_killed_producer_then_resume_computes_nothing_twice(tmp_path, sample_image):
    config, calls = config_for(tmp_path, sample_image, n=24)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "editbatch", "run", str(config)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_lines(out / "manifest.jsonl", 6)
    pids = [json.loads((out / "logs" / "cluster.json").read_text())["redis_pid"],
            *json.loads((out / "logs" / "cluster.json").read_text())["workers"].values()]
    proc.kill()
    proc.wait()
    assert wait_gone(pids, timeout=30) == []
    before = {r["id"] for r in read_jsonl(out / "manifest.jsonl") if r["status"] == "ok"}
    recorded = {p.stem for p in (out / "records").glob("*.json")}
    assert before <= recorded  # the workers' records hold at least what the producer heard of
    # Edits that finished as the run was killed could not commit (Redis went with it): the resume adopts them.
    finished = recorded | {p.name.split(".")[0] for p in (out / ".attempts").glob("*.json")}

    proc = run_cli("run", str(config), "--resume", timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest, summary = read_run(out)
    assert [r["id"] for r in manifest] == [f"item-{i:03d}" for i in range(24)]
    assert all(r["status"] == "ok" and (out / r["output"]).is_file() for r in manifest)
    counted = Counter(c["id"] for c in read_jsonl(calls))
    assert set(counted) == {r["id"] for r in manifest} and max(counted.values()) == 1, counted
    reused = {r["id"] for r in manifest if r["reused"]}
    assert reused == finished and summary["reused"] == len(finished)
    assert f"{len(recorded)} item(s) already done are reused" in proc.stdout
    # Timing figures cover what ran this time only.
    assert summary["ok"] == 24 and sum(1 for r in manifest if not r["reused"]) == 24 - len(finished)


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, sim_cluster, sample_image):
    config, _ = config_for(tmp_path, sample_image, n=3, broker=sim_cluster["url"], devices=("cpu", "cpu", "cpu"),
                           params={"seconds": 0.01})
    assert run_cli("run", str(config)).returncode == 0
    again = run_cli("run", str(config))
    assert again.returncode == 2
    assert "output_dir: " in again.stderr and "already holds a run; use --resume" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    over = run_cli("run", str(config), "--overwrite")
    assert over.returncode == 0, over.stderr


def test_resume_refuses_another_model_seed_or_dataset(tmp_path, sim_cluster, sample_image):
    config, calls = config_for(tmp_path, sample_image, n=3, broker=sim_cluster["url"],
                               devices=("cpu", "cpu", "cpu"), params={"seconds": 0.01})
    assert run_cli("run", str(config)).returncode == 0
    for override, field in [("model.params.seconds=0.02", "model.params.seconds"), ("schedule.seed=7", "seed"),
                            ("dataset.limit=2", "dataset.limit")]:
        proc = run_cli("run", str(config), "--resume", "--set", override)
        assert proc.returncode == 2 and f": {field}: differs from the run in" in proc.stderr, proc.stderr
    forced = run_cli("run", str(config), "--resume", "--force", "--set", "model.params.seconds=0.02")
    assert forced.returncode == 0, forced.stderr
    # The folder now belongs to the forced run's identity.
    same = run_cli("run", str(config), "--resume", "--set", "model.params.seconds=0.02")
    assert same.returncode == 0 and "3 item(s) already done are reused, 0 to run" in same.stdout, same.stdout
    assert len(read_jsonl(calls)) == 3


def test_retry_runs_only_the_failed_items(tmp_path, sim_cluster, sample_image):
    config, calls = config_for(tmp_path, sample_image, n=6, broker=sim_cluster["url"], devices=("cpu", "cpu", "cpu"),
                               params={"seconds": 0.01, "fail_first": {"item-001": 1, "item-004": 1}},
                               schedule={"retries": 0})
    first = run_cli("run", str(config))
    assert first.returncode == 1
    manifest, summary = read_run(tmp_path / "out")
    assert {r["id"] for r in manifest if r["status"] == "failed"} == {"item-001", "item-004"}
    proc = run_cli("retry", str(tmp_path / "out"), "--broker", sim_cluster["url"])
    assert proc.returncode == 0, proc.stderr
    manifest, summary = read_run(tmp_path / "out")
    assert all(r["status"] == "ok" for r in manifest) and summary["reused"] == 4
    assert Counter(c["id"] for c in read_jsonl(calls)) == Counter(
        {f"item-{i:03d}": 2 if i in (1, 4) else 1 for i in range(6)})
    failed_before = next(r for r in manifest if r["id"] == "item-001")
    assert failed_before["attempts"] == 1 and "simulated transient failure 1" in failed_before["errors"][0]


@pytest.mark.parametrize("mode", ["sync", "balanced"])
def test_retries_finish_an_item_that_failed_once(tmp_path, sim_cluster, sample_image, mode):
    config, calls = config_for(tmp_path, sample_image, n=7, broker=sim_cluster["url"], devices=("cpu", "cpu", "cpu"),
                               mode=mode, params={"seconds": 0.05, "fail_first": {"item-002": 1, "item-005": 2}},
                               schedule={"retries": 1})
    proc = run_cli("run", str(config))
    assert proc.returncode == 1  # item-005 fails twice: more than one retry allows
    manifest, summary = read_run(tmp_path / "out")
    by_id = {r["id"]: r for r in manifest}
    assert by_id["item-002"]["status"] == "ok" and by_id["item-002"]["attempts"] == 2
    assert len(by_id["item-002"]["errors"]) == 1
    assert by_id["item-005"]["status"] == "failed" and by_id["item-005"]["attempts"] == 2
    assert len(by_id["item-005"]["errors"]) == 2
    others = [r for i, r in by_id.items() if i not in ("item-002", "item-005")]
    assert all(r["status"] == "ok" and r["attempts"] == 1 for r in others)
    assert "Round 2: 2 item(s) again on 3 device(s)" in proc.stdout
    assert len(manifest) == 7 and summary["ok"] == 6 and summary["failed"] == 1


def test_a_poison_item_that_kills_workers_ends_failed_and_the_run_finishes(tmp_path, sample_image):
    config, calls = config_for(tmp_path, sample_image, n=9, devices=("cpu", "cpu", "cpu"), mode="nosync",
                               params={"seconds": 0.2, "crash_ids": ["item-004"]}, schedule={"retries": 1})
    proc = run_cli("run", str(config), timeout=240)
    assert proc.returncode == 1, proc.stderr[-2000:]
    manifest, summary = read_run(tmp_path / "out")
    by_id = {r["id"]: r for r in manifest}
    assert by_id["item-004"]["status"] == "failed" and by_id["item-004"]["attempts"] == 2
    assert all(r["status"] == "ok" for i, r in by_id.items() if i != "item-004"), \
        [(r["id"], r["error"]) for r in manifest if r["status"] != "ok"]
    assert Counter(c["id"] for c in read_jsonl(calls))["item-004"] == 2


@pytest.mark.parametrize("mode", ["balanced", "sync"])
def test_cancel_stops_the_run_and_its_running_edits(tmp_path, sim_cluster, sample_image, mode):
    # Balanced: the next tasks claimed their items before the cancel (shortly before the running edits were
    # expected to end); sync: the next batch claimed its items and waits at the barrier. Neither starts.
    config, calls = config_for(tmp_path, sample_image, n=12, broker=sim_cluster["url"],
                               devices=("cpu", "cpu", "cpu"), mode=mode, params={"seconds": 3.0})
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "editbatch", "run", str(config)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_lines(calls, 4)  # the first three finished, the next ones running
    cancelled = run_cli("cancel", str(out), "--broker", sim_cluster["url"])
    assert cancelled.returncode == 0 and "marked cancelled" in cancelled.stdout, cancelled.stderr
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    done_at_cancel = {p.name for p in (out / "records").glob("*.json")}
    time.sleep(4)  # past the end of any edit that was not stopped
    assert {p.name for p in (out / "records").glob("*.json")} == done_at_cancel
    assert len(read_jsonl(calls)) <= 6  # nothing started after the cancel
    manifest, summary = read_run(out)
    assert len(manifest) == 12 and summary["ok"] == len(done_at_cancel)
    assert json.loads((out / "run.json").read_text())["state"] == "cancelled"
    assert run_cli("cancel", str(out)).returncode == 2  # not running any more
