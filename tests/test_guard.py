"""Workers that guard themselves: a stuck edit ends its worker, a broken CUDA context retires it,
and a redelivered copy of a finished item does nothing."""

from __future__ import annotations

import json
import time

from .conftest import read_jsonl, read_run, run_cli, simple_rows, write_config, write_dataset


def auto_config(tmp_path, image, rows, *, params, schedule, devices=("cpu", "cpu")):
    dataset = write_dataset(tmp_path / "data", rows)
    return write_config(tmp_path / "c.yaml", name="guard", dataset={"path": str(dataset)},
                        output_dir=str(tmp_path / "out"),
                        model={"type": "simulated", "path": "sim", "params": params},
                        cluster={"broker": "auto", "devices": list(devices)}, schedule=schedule)


def test_a_stuck_edit_ends_its_worker_which_is_started_again(tmp_path, sample_image):
    rows = simple_rows(6, sample_image)
    rows[1]["params"] = {"seconds": 30.0}  # far past the timeout: a hung GPU call
    config = auto_config(tmp_path, sample_image, rows, params={"seconds": 0.1},
                         schedule={"mode": "nosync", "task_timeout_s": 3, "retries": 0})
    proc = run_cli("run", str(config), timeout=180)
    assert proc.returncode == 1, proc.stderr[-2000:]
    manifest, _ = read_run(tmp_path / "out")
    by_id = {r["id"]: r for r in manifest}
    assert by_id["item-001"]["status"] == "failed"
    assert all(r["status"] == "ok" for i, r in by_id.items() if i != "item-001"), by_id
    log = (tmp_path / "out" / "logs" / "worker-cpu1.log").read_text()
    assert "item-001 ran past its timeout" in log
    assert "worker cpu1 exited (code 124); starting it again" in proc.stdout


def test_a_worker_with_a_broken_cuda_context_retires_and_its_items_go_elsewhere(tmp_path, sample_image):
    calls = tmp_path / "calls.jsonl"
    # Items of 0.3 s: the healthy device still has seconds of work when cpu1 retires, so the run is still
    # going when the retired worker's process exits (0.3 to 1.3 s after its warm shutdown begins) and the
    # cluster starts it again: with 0.1 s items the run could end first and the restart go unreported.
    config = auto_config(tmp_path, sample_image, simple_rows(16, sample_image),
                         params={"seconds": 0.3, "call_log": str(calls), "sticky_fail_after": {"cpu1": 2}},
                         schedule={"mode": "balanced", "retries": 4})
    proc = run_cli("run", str(config), "--set", "cluster.sick_after=3", timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    manifest, _ = read_run(tmp_path / "out")
    assert all(r["status"] == "ok" for r in manifest)
    failed_attempts = [e for r in manifest for e in r["errors"]]
    assert failed_attempts and all("CUDA error" in e or "worker" in e for e in failed_attempts)
    log = (tmp_path / "out" / "logs" / "worker-cpu1.log").read_text()
    assert "3 CUDA errors in a row" in log and "stops taking work" in log
    assert "worker cpu1 exited" in proc.stdout and "starting it again" in proc.stdout
    # A retiring worker takes no new work: at most sick_after CUDA failures per life of cpu1.
    cpu1_failures = [c for c in read_jsonl(calls) if c["device"] == "cpu1"]
    assert len(cpu1_failures) <= 3 * (2 + 3)


def test_a_redelivered_copy_of_a_finished_item_is_not_computed_again(tmp_path, sim_cluster, sample_image):
    from editbatch.celery_app import make_app
    from editbatch.redisconn import connect

    calls = tmp_path / "calls.jsonl"
    dataset = write_dataset(tmp_path / "data", simple_rows(3, sample_image))
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.yaml", name="x", dataset={"path": str(dataset)}, output_dir=str(out),
                          model={"type": "simulated", "path": "sim", "params": {"seconds": 0.01,
                                                                               "call_log": str(calls)}},
                          cluster={"broker": sim_cluster["url"], "devices": ["cpu", "cpu", "cpu"]})
    assert run_cli("run", str(config)).returncode == 0
    record = json.loads((out / "records" / "item-001.json").read_text())
    manifest, _ = read_run(out)
    row = next(r for r in manifest if r["id"] == "item-001")
    report = "editbatch:run:redelivery:results"
    payload = {"id": "item-001", "images": row["inputs"], "instruction": row["instruction"], "output_dir": str(out),
               "seed": record["seed"], "index": 1, "model": record["model"], "report": report,
               "params": {"seconds": 0.01, "call_log": str(calls)}}
    make_app(sim_cluster["url"]).send_task("editbatch.edit", args=[payload], queue="cpu2", ignore_result=True)
    redis = connect(sim_cluster["url"])
    deadline = time.monotonic() + 30
    result = None
    while result is None and time.monotonic() < deadline:
        got = redis.blpop([report], timeout=1)
        if got and "event" not in json.loads(got[1]):
            result = json.loads(got[1])
    assert result and result["status"] == "ok" and result["reused"] is True
    assert result["output"] == record["output"] and result["device"] == record["device"]
    assert len(read_jsonl(calls)) == 3  # the copy computed nothing
