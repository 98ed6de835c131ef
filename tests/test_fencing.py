"""A late worker never overwrites the copy that replaced it: workers started by hand, one stopped and continued.

Three `editbatch worker` processes on the `redis_url` Redis (not `broker:
auto`, whose monitor would kill the silent worker). The worker editing the
slow item is stopped (SIGSTOP) just before its edit ends, for longer than the
presence TTL: the producer writes it off and sends the item again; the copy
that replaces it frees the stopped worker's claim (taking a new token) and
computes it. Then the stopped worker is continued (SIGCONT): it finishes its
edit while the replacement still runs, and its commit is refused. The run
completes with one manifest line and one record per item, every image
decodes, and each record on disk is the attempt the manifest names.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from editbatch import ledger
from editbatch.devices import expand_devices

from .conftest import REPO, assert_barrier_held, read_jsonl, read_run, simple_rows, write_config, write_dataset

DEVICES = ["cpu", "cpu", "cpu"]
N = 9
SLOW = "item-001"  # in sync mode on cpu1 (item j of a batch runs on device j)
SLOW_S = 8.0  # long enough that its replacement still runs when the stopped worker comes back
STOPPED_S = 12.0  # twice the presence TTL


def config_for(folder: Path, url: str, roots: str, image: Path, mode: str = "balanced") -> tuple[Path, Path, Path]:
    rows = simple_rows(N, image)
    rows[1]["params"] = {"seconds": SLOW_S}
    calls = folder / "calls.jsonl"
    config = write_config(folder / f"{mode}.yaml", name=f"fencing-{mode}",
                          dataset={"path": str(write_dataset(folder / "data", rows))},
                          output_dir=str(folder / "out"),
                          model={"type": "simulated", "path": "sim",
                                 "params": {"seconds": 0.3, "call_log": str(calls)}},
                          cluster={"broker": url, "devices": DEVICES, "namespace": "fencing", "ready_timeout_s": 60,
                                   "output_roots": [roots], "input_roots": [roots]},
                          schedule={"mode": mode, "task_timeout_s": 60})
    return config, calls, folder / "out"


@pytest.fixture(scope="module")
def workers(_redis_server, tmp_path_factory, sample_image):
    """Three workers started by hand, shared by this module's tests; their logs and pids by queue."""
    folder = tmp_path_factory.mktemp("fencing-workers")
    roots = str(tmp_path_factory.getbasetemp())
    config, _, _ = config_for(folder, _redis_server, roots, sample_image)
    procs, logs = {}, {}
    for device in expand_devices(DEVICES):
        logs[device.queue] = folder / f"worker-{device.queue}.log"
        with logs[device.queue].open("wb") as log:
            procs[device.queue] = subprocess.Popen(
                [sys.executable, "-m", "editbatch", "worker", "--config", str(config), "--device", device.spec],
                cwd=REPO, env={**os.environ, "EDITBATCH_BROKER": _redis_server, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield {"url": _redis_server, "roots": roots, "procs": procs, "logs": logs}
    finally:
        for proc in procs.values():
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def stop_before_its_edit_ends(calls: Path, producer: subprocess.Popen) -> dict:
    """SIGSTOP the worker editing the slow item 0.4 s before its edit would end; returns its call line."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and producer.poll() is None:
        started = [c for c in read_jsonl(calls) if c["id"] == SLOW] if calls.exists() else []
        if started:
            time.sleep(max(0.0, started[0]["t"] + SLOW_S - 0.4 - time.time()))
            os.kill(started[0]["pid"], signal.SIGSTOP)
            return started[0]
        time.sleep(0.05)
    raise AssertionError("the slow item never started")


def wait_for_log(path: Path, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("mode", ["balanced", "sync"])
def test_a_stopped_worker_that_comes_back_cannot_overwrite_its_replacement(workers, tmp_path, sample_image, mode):
    config, calls, out = config_for(tmp_path, workers["url"], workers["roots"], sample_image, mode)
    began = time.monotonic()
    producer = subprocess.Popen([sys.executable, "-m", "editbatch", "run", str(config)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = stop_before_its_edit_ends(calls, producer)
    try:
        time.sleep(STOPPED_S)
    finally:
        os.kill(victim["pid"], signal.SIGCONT)
    stdout, stderr = producer.communicate(timeout=60)
    assert producer.returncode == 0, stdout[-3000:] + stderr[-2000:]
    assert f"{victim['device']} lost" in stdout
    # The late worker finishes its edit, loses the commit and leaves the item as its replacement made it.
    log = workers["logs"][victim["device"]]
    assert wait_for_log(log, f"{SLOW} superseded by a later claim", 20), log.read_text()[-3000:]

    manifest, summary = read_run(out)
    assert sorted(r["id"] for r in manifest) == [f"item-{i:03d}" for i in range(N)]  # one line per item
    assert all(r["status"] == "ok" for r in manifest), [(r["id"], r["errors"]) for r in manifest]
    assert len(list((out / "records").glob("*.json"))) == N
    for row in manifest:
        with Image.open(out / row["output"]) as im:
            im.load()  # a whole PNG
        record = ledger.read_record(ledger.record_path(out, row["id"]))
        assert (record["device"], record["started_at"]) == (row["device"], row["started_at"]), (row, record)
    slow = ledger.read_record(ledger.record_path(out, SLOW))
    assert slow["pid"] != victim["pid"]  # the replacement's attempt
    assert [p.name for p in (out / ".attempts").iterdir()] == []
    counted = Counter(c["id"] for c in read_jsonl(calls))
    twice = sorted(i for i, n in counted.items() if n > 1)
    print(f"{mode}: computed twice: {twice} ({len(twice)} of {N}); {time.monotonic() - began:.1f}s")
    assert SLOW in twice and max(counted.values()) == 2
    if mode == "sync":
        assert_barrier_held(manifest)
    assert json.loads((out / "summary.json").read_text())["ok"] == N
