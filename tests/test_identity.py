"""The model identity: what a run asks for is what the workers hold, and workers of another model stay out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from editbatch.config import ModelConfig
from editbatch.models import identity
from editbatch.redisconn import connect

from .conftest import REPO, SIM_DEVICES, read_run, run_cli, simple_rows, write_config, write_dataset


def test_identity_covers_every_load_setting_and_names_the_difference():
    base = identity.model_identity(ModelConfig(type="simulated", path="sim"))
    other = identity.model_identity(ModelConfig(type="simulated", path="sim", dtype="bfloat16",
                                                lora={"path": "/nope", "scale": 0.5}))
    assert set(base) == set(identity.FIELDS)
    assert not identity.matches(other, base) and identity.shared_queue(other) != identity.shared_queue(base)
    assert identity.difference(other, base).startswith("dtype auto != bfloat16, lora None != ")
    assert identity.matches({"type": "simulated", "path": "sim"}, base)  # a v1 task naming type and path only
    assert identity.same_base(base, {**base, "lora": {"path": "x", "scale": 1.0, "weight_name": None}})
    assert not identity.same_base(base, {**base, "dtype": "float16"})


def test_a_run_asking_for_another_dtype_or_lora_than_the_warm_workers_is_refused(tmp_path, sim_cluster, sample_image):
    dataset = write_dataset(tmp_path / "data", simple_rows(3, sample_image))
    config = write_config(tmp_path / "c.yaml", dataset={"path": str(dataset)}, output_dir=str(tmp_path / "out"),
                          model={"type": "simulated", "path": "sim", "dtype": "bfloat16",
                                 "lora": {"path": str(tmp_path / "missing-lora")}, "params": {"seconds": 0.01}},
                          cluster={"broker": sim_cluster["url"], "devices": SIM_DEVICES, "ready_timeout_s": 30})
    proc = run_cli("run", str(config))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "workers serve another model" in proc.stderr and "dtype auto != bfloat16" in proc.stderr
    assert not (tmp_path / "out" / "records").exists()  # nothing ran, nothing recorded


def test_a_worker_of_another_model_never_takes_items_and_sends_on_what_reaches_it(tmp_path, sim_cluster,
                                                                                  sample_image):
    """A fourth worker holding another model shares the broker: a balanced run and tasks sent to the
    plain `shared` queue all end ok on the workers of their own model."""
    other = write_config(tmp_path / "other.yaml", dataset={"path": str(write_dataset(tmp_path, []))},
                         output_dir=str(tmp_path / "o"), model={"type": "simulated", "path": "other-model"},
                         cluster={"output_roots": [str(tmp_path)], "input_roots": [str(tmp_path)]})
    env = {**os.environ, "EDITBATCH_BROKER": sim_cluster["url"]}
    log = (tmp_path / "other.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "editbatch", "worker", "--config", str(other), "--device",
                               "cpu7"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    redis = connect(sim_cluster["url"])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            record = redis.get("editbatch:worker:cpu7")
            if record and json.loads(record)["state"] == "ready":
                break
            time.sleep(0.2)
        else:
            raise AssertionError((tmp_path / "other.log").read_text())
        dataset = write_dataset(tmp_path / "data", simple_rows(12, sample_image))
        config = write_config(tmp_path / "c.yaml", dataset={"path": str(dataset)}, output_dir=str(tmp_path / "out"),
                              model={"type": "simulated", "path": "sim", "params": {"seconds": 0.05}},
                              cluster={"broker": sim_cluster["url"], "devices": SIM_DEVICES},
                              schedule={"mode": "balanced", "task_timeout_s": 30})
        assert run_cli("run", str(config)).returncode == 0
        manifest, summary = read_run(tmp_path / "out")
        assert summary["ok"] == 12 and {r["device"] for r in manifest} <= {"cpu0", "cpu1", "cpu2"}

        from editbatch.celery_app import make_app
        from editbatch.tasks.contract import EditTask

        app = make_app(sim_cluster["url"])
        wanted = identity.model_identity(ModelConfig(type="simulated", path="sim"))
        results = [app.send_task("editbatch.edit", queue="shared", args=[EditTask(
            id=f"direct-{i}", images=[], instruction="x", output_dir=str(tmp_path / "direct"), seed=i,
            model=wanted, params={"seconds": 0.2}).to_payload()]) for i in range(8)]
        done = [r.get(timeout=60) for r in results]
        assert {d["status"] for d in done} == {"ok"} and {d["device"] for d in done} <= {"cpu0", "cpu1", "cpu2"}
        app.close()
    finally:
        worker.terminate()
        worker.wait(20)
        log.close()
        redis.close()
    assert "sent on to shared-" in (tmp_path / "other.log").read_text()
