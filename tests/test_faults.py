"""Fault injection on real processes: for each mode, a worker killed (SIGKILL) or stopped (SIGSTOP)
mid-run, the producer killed and the run resumed, and Redis killed and started again.

Each test reads what users read: every item appears exactly once in the manifest, every ok item
has its image, no item was computed twice where that can be avoided (model calls counted per
item id by the simulated model), the barrier rule holds in sync mode, and no process is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from .conftest import (REPO, assert_barrier_held, read_jsonl, read_run, run_cli, simple_rows, unsaved_at, wait_gone,
                       write_config, write_dataset)

MODES = ["sync", "nosync", "balanced", "window"]
N = 18


def start(tmp_path, image, mode, *, n=N, params=None, **schedule):
    dataset = write_dataset(tmp_path / "data", simple_rows(n, image))
    calls = tmp_path / "calls.jsonl"
    config = write_config(tmp_path / "faults.yaml", name=f"faults-{mode}", dataset={"path": str(dataset)},
                          output_dir=str(tmp_path / "out"),
                          model={"type": "simulated", "path": "sim",
                                 "params": {**(params or {"seconds": 0.4, "jitter": 0.2}), "call_log": str(calls)}},
                          cluster={"broker": "auto", "devices": ["cpu", "cpu", "cpu"]},
                          schedule={"mode": mode, "task_timeout_s": 60, **schedule})
    proc = subprocess.Popen([sys.executable, "-m", "editbatch", "run", str(config)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, config, calls, tmp_path / "out"


def wait_calls(calls, count, proc, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if calls.exists() and calls.read_text().count("\n") >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run did not reach {count} model calls")


def cluster(out):
    return json.loads((out / "logs" / "cluster.json").read_text())


def check_run(out, calls, mode, *, twice_allowed=()):
    """The invariants every fault test asserts; returns the manifest."""
    manifest, summary = read_run(out)
    assert sorted(r["id"] for r in manifest) == [f"item-{i:03d}" for i in range(N)]  # exactly once each
    assert all(r["status"] == "ok" for r in manifest), [(r["id"], r["errors"]) for r in manifest if r["status"] != "ok"]
    assert all((out / r["output"]).is_file() for r in manifest)
    counted = Counter(c["id"] for c in read_jsonl(calls))
    twice = {i for i, n in counted.items() if n > 1}
    assert twice <= set(twice_allowed) and max(counted.values()) <= 2, counted
    if mode == "sync":
        assert_barrier_held(manifest)
    return manifest


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_worker_killed_mid_run(tmp_path, sample_image, mode):
    proc, config, calls, out = start(tmp_path, sample_image, mode)
    wait_calls(calls, 5, proc)
    victim = cluster(out)["workers"]["cpu1"]
    os.kill(victim, signal.SIGKILL)
    unsaved = unsaved_at(calls, "cpu1", out / "logs" / "worker-cpu1.log")
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-2000:]
    assert "worker cpu1 exited (code -9); starting it again" in stdout
    check_run(out, calls, mode, twice_allowed=unsaved)
    assert wait_gone([cluster(out)["redis_pid"], *cluster(out)["workers"].values(), victim]) == []


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_worker_stopped_mid_run(tmp_path, sample_image, mode):
    proc, config, calls, out = start(tmp_path, sample_image, mode)
    wait_calls(calls, 5, proc)
    victim = cluster(out)["workers"]["cpu2"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # stop it just after it started an edit: a hung GPU call
        # Its latest call, not the file's last line: in sync mode the three devices start each batch within a
        # millisecond, in an order of their own, and a run whose cpu2 never logged last ended before this loop.
        last = [c for c in read_jsonl(calls) if c["device"] == "cpu2"][-1]
        if time.time() - last["t"] < 0.15:
            break
        time.sleep(0.01)
    os.kill(victim, signal.SIGSTOP)  # alive, silent
    unsaved = unsaved_at(calls, "cpu2", out / "logs" / "worker-cpu2.log")
    try:
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if wait_gone([victim], timeout=0.1):
            os.kill(victim, signal.SIGKILL)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-2000:]
    # Its presence expired: the producer wrote it off, or saw it come back as a new process (the
    # cluster kills a silent worker and starts it again), whichever its next check found.
    assert "cpu2 lost: continuing with 2 devices" in stdout or "cpu2 back: continuing with 3 devices" in stdout
    check_run(out, calls, mode, twice_allowed=unsaved)
    assert wait_gone([cluster(out)["redis_pid"], *cluster(out)["workers"].values(), victim]) == []


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_producer_killed_then_resumed(tmp_path, sample_image, mode):
    proc, config, calls, out = start(tmp_path, sample_image, mode)
    wait_calls(calls, 7, proc)
    pids = [cluster(out)["redis_pid"], *cluster(out)["workers"].values()]
    proc.kill()
    proc.wait()
    assert wait_gone(pids, timeout=30) == []
    done_before = {p.stem for p in (out / "records").glob("*.json")}
    # Edits that finished as the run was killed could not commit (Redis went with it): the resume adopts them.
    done_before |= {p.name.split(".")[0] for p in (out / ".attempts").glob("*.json")}
    resumed = run_cli("run", str(config), "--resume", timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-2000:]
    manifest = check_run(out, calls, mode)  # nothing twice: the killed run's edits stopped with it
    assert {r["id"] for r in manifest if r["reused"]} == done_before
    assert wait_gone([cluster(out)["redis_pid"], *cluster(out)["workers"].values()]) == []


@pytest.mark.slow
def test_producer_killed_while_workers_wait_at_the_barrier(tmp_path, sample_image):
    """Sync mode with cpu1 eight times slower: cpu0 and cpu2 finish batch 0 and wait at its barrier with
    batch 1's tasks. Killed with the producer, Redis goes too; a waiting worker must still exit at once,
    not sit out the barrier's 120 s wait retrying a Redis that is gone."""
    proc, config, calls, out = start(tmp_path, sample_image, "sync", n=9,
                                     params={"seconds": 0.5, "device_speed": [1, 8, 1]})
    wait_calls(calls, 3, proc)
    time.sleep(1.5)  # cpu0 and cpu2 are done with batch 0 (0.5 s); cpu1 computes until 4 s
    assert sorted(c["device"] for c in read_jsonl(calls)) == ["cpu0", "cpu1", "cpu2"]  # batch 0 only: two wait
    pids = [cluster(out)["redis_pid"], *cluster(out)["workers"].values()]
    proc.kill()
    proc.wait()
    assert wait_gone(pids, timeout=20) == []
    resumed = run_cli("run", str(config), "--resume", timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-2000:]
    manifest, _ = read_run(out)
    assert sorted(r["id"] for r in manifest) == [f"item-{i:03d}" for i in range(9)]
    assert all(r["status"] == "ok" for r in manifest)
    counted = Counter(c["id"] for c in read_jsonl(calls))
    assert max(counted.values()) == 1, counted  # cpu1's edit ended in its warm shutdown: the resume adopted it


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_redis_killed_and_started_again(tmp_path, sample_image, mode):
    proc, config, calls, out = start(tmp_path, sample_image, mode)
    wait_calls(calls, 5, proc)
    os.kill(cluster(out)["redis_pid"], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-2000:]
    assert "private Redis exited (code -9); starting it again" in stdout
    check_run(out, calls, mode)
    assert wait_gone([cluster(out)["redis_pid"], *cluster(out)["workers"].values()]) == []
