"""`editbatch status`: a running run's progress and device states, then the finished run, from files and Redis."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from .conftest import REPO, SIM_DEVICES, read_jsonl, simple_rows, write_config, write_dataset


def status(out, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "EDITBATCH_BROKER"}
    return subprocess.run([sys.executable, "-m", "editbatch", "status", str(out), *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO, env=env)


def test_status_of_a_running_then_finished_run(sim_cluster, sample_image, tmp_path):
    dataset = write_dataset(tmp_path, simple_rows(18, sample_image))
    out = tmp_path / "out"
    config = write_config(tmp_path / "run.yaml", name="slow", dataset={"path": str(dataset)}, output_dir=str(out),
                          model={"type": "simulated", "path": "sim", "params": {"seconds": 1.0}},
                          cluster={"broker": sim_cluster["url"], "devices": SIM_DEVICES},
                          schedule={"mode": "nosync", "task_timeout_s": 30})
    run = subprocess.Popen([sys.executable, "-m", "editbatch", "run", str(config)], cwd=REPO, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Asked after 3 of 18 items of 1 s: about 5 s of run left, more than two `status` commands take to
        # start on a loaded machine, so the run is still running when they look.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (out / "manifest.jsonl").is_file() or \
                len(read_jsonl(out / "manifest.jsonl")) < 3:
            time.sleep(0.1)
        record = json.loads((out / "run.json").read_text())
        assert "***" in record["broker"] and sim_cluster["url"].split("@")[0].split(":")[-1] not in record["broker"]
        live = status(out, "--broker", sim_cluster["url"])
        assert live.returncode == 0, live.stderr
        text = live.stdout
        assert f"run {record['run_id']} (slow): running" in text
        assert "/18 done" in text and "eta: " in text and "rate: " in text
        assert sum("busy: item-" in line for line in text.splitlines()) >= 2, text
        blind = status(out)
        assert "devices unknown" in blind.stdout and "cpu0: unknown" in blind.stdout
        stdout, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0
    assert f"[editbatch] Run {record['run_id']}: output folder {out}" in stdout.splitlines()[0]
    done = status(out, "--broker", sim_cluster["url"])
    assert f"run {record['run_id']} (slow): finished" in done.stdout
    assert "items: 18/18 done (100%): 18 ok, 0 failed, 0 invalid" in done.stdout


def test_status_ignores_the_files_an_earlier_run_left_in_the_folder(tmp_path):
    """A run restarted into the same folder: until it writes its own manifest and summary, they are the old run's."""
    out = tmp_path / "out"
    out.mkdir()
    old = [{"id": f"a{i}", "index": i, "status": "ok", "started_at": 1.0, "finished_at": 2.0} for i in range(5)]
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    (out / "summary.json").write_text(json.dumps({"run_id": "old", "items": 5, "ok": 5}))
    (out / "run.json").write_text(json.dumps({"run_id": "new", "name": "again", "items": 8, "devices": ["cpu0"],
                                              "started_at": time.time() + 1, "pid": os.getpid(),
                                              "host": socket.gethostname(), "broker": "redis://:***@h:1/0"}))
    text = status(out).stdout
    assert "run new (again): running" in text and "items: 0/8 done" in text and "cpu0: unknown" in text
