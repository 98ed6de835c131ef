"""The one-command local cluster and the plain Celery worker entry point."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from .conftest import (REPO, as_in_a_terminal, read_run, run_cli, simple_rows, stop_worker, wait_gone, write_config,
                       write_dataset)


def local_config(tmp_path, image, n=6, devices=("cpu", "cpu", "cpu"), **model_params):
    dataset = write_dataset(tmp_path / "data", simple_rows(n, image))
    return write_config(tmp_path / "local.yaml", name="local", dataset={"path": str(dataset)},
                        output_dir=str(tmp_path / "out"),
                        model={"type": "simulated", "params": {"seconds": 0.02, **model_params}},
                        cluster={"broker": "auto", "devices": list(devices), "load_concurrency": 1},
                        schedule={"mode": "sync"})


def cluster_pids(out) -> list[int]:
    info = json.loads((out / "logs" / "cluster.json").read_text())
    return [info["redis_pid"], *info["workers"].values()]


def test_staggered_loading_unified_start_and_clean_exit(tmp_path, sample_image):
    config = local_config(tmp_path, sample_image, load_seconds=0.4)
    proc = run_cli("run", str(config))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    workers = json.loads((out / "workers.json").read_text())
    assert sorted(w["queue"] for w in workers) == ["cpu0", "cpu1", "cpu2"]
    loads = sorted((w["load_started_at"], w["load_finished_at"]) for w in workers)
    for (_, end), (start, _) in zip(loads, loads[1:]):
        assert start >= end, f"loads overlap with load_concurrency 1: {loads}"
    manifest, summary = read_run(out)
    assert min(r["started_at"] for r in manifest) >= max(end for _, end in loads)  # unified start
    assert wait_gone(cluster_pids(out)) == []


def test_load_concurrency_two_lets_two_workers_load_together(tmp_path, sample_image):
    config = local_config(tmp_path, sample_image, n=3, load_seconds=1.0)
    proc = run_cli("run", str(config), "--set", "cluster.load_concurrency=3")
    assert proc.returncode == 0, proc.stderr
    workers = json.loads((tmp_path / "out" / "workers.json").read_text())
    loads = sorted((w["load_started_at"], w["load_finished_at"]) for w in workers)
    assert any(start < end for (_, end), (start, _) in zip(loads, loads[1:])), "3 slots: loads may overlap"


def test_ctrl_c_stops_every_process_and_keeps_what_finished(tmp_path, sample_image):
    config = local_config(tmp_path, sample_image, n=60, devices=("cpu", "cpu"))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "editbatch", "run", str(config), "--set",
                             "model.params.seconds=0.3"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=as_in_a_terminal)
    deadline = time.monotonic() + 60
    manifest = out / "manifest.jsonl"
    while time.monotonic() < deadline and not (manifest.exists() and manifest.read_text().count("\n") >= 2):
        time.sleep(0.1)
    pids = cluster_pids(out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and f"finish it with: editbatch resume {out}" in err, err
    assert wait_gone(pids) == []
    records, summary = read_run(out)
    assert len(records) == 60 and summary["ok"] >= 2
    assert {r["status"] for r in records} == {"ok", "not_run"}  # stopped, not failed: a resume runs them
    assert summary["not_run"] == sum(r["status"] == "not_run" for r in records) and summary["failed"] == 0
    assert any("run interrupted before this item" in (r["error"] or "") for r in records)


def test_cancel_stops_a_producer_started_in_the_background_by_a_script(tmp_path, sample_image):
    """`editbatch run ... &` in a script (or under nohup) starts the producer with SIGINT ignored. `editbatch
    cancel DIR`, with no broker (a private Redis's password is stored nowhere), must still stop it as Ctrl-C
    would: workers stopped, every item in the manifest, the run marked cancelled, exit 130."""
    config = local_config(tmp_path, sample_image, n=60, devices=("cpu", "cpu"))
    out = tmp_path / "out"
    script = f"{sys.executable} -m editbatch run {config} --set model.params.seconds=0.3 & wait $!"
    proc = subprocess.Popen(["bash", "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    manifest = out / "manifest.jsonl"
    while time.monotonic() < deadline and not (manifest.exists() and manifest.read_text().count("\n") >= 2):
        time.sleep(0.1)
    producer = json.loads((out / "run.json").read_text())["pid"]
    with open(f"/proc/{producer}/status") as fh:
        ignored = int(next(line for line in fh if line.startswith("SigIgn:")).split()[1], 16)
    assert ignored & (1 << (signal.SIGINT - 1)), "the background job should have SIGINT ignored"
    pids = cluster_pids(out)
    cancelled = run_cli("cancel", str(out))
    assert cancelled.returncode == 0 and f"producer {producer} stopped" in cancelled.stdout, cancelled.stderr
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"finish it with: editbatch resume {out}" in err, err
    assert wait_gone(pids) == []
    records, summary = read_run(out)
    assert len(records) == 60 and summary["ok"] >= 2 and summary["failed"] == 0
    assert {r["status"] for r in records} == {"ok", "not_run"}
    assert json.loads((out / "run.json").read_text())["state"] == "cancelled"


def test_a_killed_producer_takes_its_cluster_with_it(tmp_path, sample_image):
    config = local_config(tmp_path, sample_image, n=40, devices=("cpu",), seconds=0.3)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "editbatch", "run", str(config)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / "workers.json").exists():
        time.sleep(0.1)
    pids = cluster_pids(out)
    proc.kill()
    proc.wait()
    assert wait_gone(pids, timeout=20) == []


def test_plain_celery_worker_answers_ping_during_a_long_task(tmp_path, sim_cluster, sample_image):
    """`celery -A editbatch.celery_app worker` with EDITBATCH_DEVICE serves a run and stays visible."""
    dataset = write_dataset(tmp_path / "data", simple_rows(2, sample_image))
    config = write_config(tmp_path / "c.yaml", name="plain", dataset={"path": str(dataset)},
                          output_dir=str(tmp_path / "out"),
                          model={"type": "simulated", "path": "plain", "params": {"seconds": 3.0}},
                          cluster={"broker": sim_cluster["url"], "devices": ["cpu7"], "ready_timeout_s": 60},
                          schedule={"mode": "sync", "task_timeout_s": 60})
    env = {**os.environ, "EDITBATCH_BROKER": sim_cluster["url"], "EDITBATCH_DEVICE": "cpu7",
           "EDITBATCH_CONFIG": str(config)}
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "editbatch.celery_app", "worker", "-P", "threads",
                               "-c", "1", "-n", "cpu7@%h", "--without-mingle", "--without-gossip", "-l", "WARNING"],
                              env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        producer = subprocess.Popen([sys.executable, "-m", "editbatch", "run", str(config)], cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        manifest = tmp_path / "out" / "manifest.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (tmp_path / "out" / "workers.json").exists():
            time.sleep(0.1)
        time.sleep(1.0)  # inside the first 3-second task
        ping = subprocess.run([sys.executable, "-m", "celery", "-A", "editbatch.celery_app", "inspect", "ping",
                               "-d", f"cpu7@{socket.gethostname()}", "-t", "1.5"],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        busy = not manifest.exists() or manifest.read_text().count("\n") == 0
        out, err = producer.communicate(timeout=120)
        assert producer.returncode == 0, err
        assert busy, "the ping must happen while the task runs"
        assert "pong" in ping.stdout, ping.stdout + ping.stderr
        records, _ = read_run(tmp_path / "out")
        assert [r["device"] for r in records] == ["cpu7", "cpu7"]
    finally:
        stop_worker(worker)


def test_producer_names_workers_that_never_come(tmp_path, sim_cluster, sample_image):
    dataset = write_dataset(tmp_path / "data", simple_rows(1, sample_image))
    config = write_config(tmp_path / "c.yaml", name="x", dataset={"path": str(dataset)},
                          output_dir=str(tmp_path / "out"), model={"type": "simulated", "path": "sim"},
                          cluster={"broker": sim_cluster["url"], "devices": ["cpu", "cpu", "cpu", 5],
                                   "ready_timeout_s": 1})
    proc = run_cli("run", str(config))
    assert proc.returncode == 2
    assert "workers not ready after 1s: gpu5 (absent)" in proc.stderr


def test_producer_refuses_workers_serving_another_model(tmp_path, sim_cluster, sample_image):
    dataset = write_dataset(tmp_path / "data", simple_rows(1, sample_image))
    config = write_config(tmp_path / "c.yaml", name="x", dataset={"path": str(dataset)},
                          output_dir=str(tmp_path / "out"), model={"type": "simulated", "path": "other"},
                          cluster={"broker": sim_cluster["url"], "devices": ["cpu", "cpu", "cpu"],
                                   "ready_timeout_s": 5})
    proc = run_cli("run", str(config))
    assert proc.returncode == 2 and "serve another model" in proc.stderr


def test_items_of_a_dead_worker_are_retried_on_the_others_and_the_run_completes(tmp_path, sample_image):
    config = local_config(tmp_path, sample_image, n=30, devices=("cpu", "cpu"), seconds=0.3)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "editbatch", "run", str(config), "--set", "schedule.mode=nosync"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ((out / "manifest.jsonl").exists()
                                               and (out / "manifest.jsonl").read_text().count("\n") >= 2):
        time.sleep(0.1)
    victim = json.loads((out / "logs" / "cluster.json").read_text())["workers"]["cpu1"]
    os.kill(victim, signal.SIGKILL)
    started = time.monotonic()
    stdout, err = proc.communicate(timeout=120)
    proc.stdout = stdout
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 40  # presence expiry + a check, not 30 task timeouts
    records, summary = read_run(out)
    assert all(r["status"] == "ok" for r in records) and summary["ok"] == 30, \
        [(r["id"], r["errors"]) for r in records if r["status"] != "ok"]
    out_text = proc.stdout
    assert "worker cpu1 exited (code -9); starting it again" in out_text
    # The item cpu1 was editing counts one failed attempt; those only queued there move without one.
    retried = [r for r in records if r["attempts"] == 2]
    assert len(retried) <= 1 and all(r["index"] % 2 == 1 for r in retried)
    assert all("worker is gone" in r["errors"][0] or "worker exited" in r["errors"][0] for r in retried), \
        [r["errors"] for r in retried]
    assert any(r["round"] == 1 for r in records)
