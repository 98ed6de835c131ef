"""docker-compose.yml as written, played as local processes: Redis, six workers, the coordinator and Flower
agree on the broker, the password variables, the queues and the roots, and every submitted item ends ok.

Costs about 15 s on 2 cores (nine processes start; three small jobs of simulated edits).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import yaml

from editbatch.redisconn import connect

from .compose_rehearsal import SIMULATED, Rehearsal
from .conftest import REPO, read_run, simple_rows, write_dataset
from .jobs_helpers import flower_call


def wait_for(what: str, check, compose: Rehearsal, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        dead = [n for n, p in compose.procs.items() if p.poll() is not None]
        assert not dead, f"{what}: {dead} exited:\n" + "\n".join(compose.log(n) for n in dead)
        time.sleep(0.3)
    raise AssertionError(f"{what}: timed out\n" + "\n".join(f"--- {n}\n{compose.log(n)}" for n in compose.procs))


def test_the_compose_services_run_jobs_from_the_cli_the_producer_and_flower(compose, sample_image):
    workers = sorted(n for n in compose.services if n.startswith("worker-gpu"))
    compose.start_redis()
    broker = compose.environment("coordinator")["EDITBATCH_BROKER"]
    redis = connect(broker)
    wait_for("redis", lambda: _pings(redis), compose, timeout=20)
    for name in workers:
        compose.start(name)
    compose.start("coordinator")
    compose.start_flower()
    queues = [f"gpu{n.removeprefix('worker-gpu')}" for n in workers]

    def ready():
        records = [json.loads(r) if r else {} for r in redis.mget([f"editbatch:worker:{q}" for q in queues])]
        return all(r.get("state") == "ready" for r in records) and redis.exists("editbatch:jobs:settings")

    wait_for("workers ready and coordinator serving", ready, compose)

    # The data volume holds the dataset the producer's config names.
    producer_config = yaml.safe_load(compose.path("/workspace/configs/qwen_image_edit_6gpu.yaml").read_text())
    image = compose.path("/workspace/data/red.png")
    shutil.copy(sample_image, image)
    dataset = write_dataset(compose.path("/workspace/data"), simple_rows(6, image))
    assert str(dataset) == producer_config["dataset"]["path"]
    runs = compose.path("/workspace/runs")
    # 1. `docker compose run --rm producer`: the 6-GPU config submitted as a job, waited for.
    produced = compose.run("producer")
    assert produced.returncode == 0, produced.stdout + produced.stderr + compose.log("coordinator")
    assert "done: 6 ok, 0 failed, 0 invalid" in produced.stdout
    # 2. `docker compose exec coordinator editbatch submit ...`: another job into the runs volume.
    compose.path("/workspace/configs/second.yaml").write_text(yaml.safe_dump(
        {**producer_config, "name": "second", "output_dir": str(runs / "second")}))
    second = compose.exec("coordinator", "editbatch", "submit", "/workspace/configs/second.yaml", "--wait")
    assert second.returncode == 0, second.stdout + second.stderr + compose.log("coordinator")
    # 3. Flower's REST API, with the credentials compose gives it.
    auth = compose.environment("flower")["FLOWER_BASIC_AUTH"]
    wait_for("flower sees the coordinator", lambda: _flower_sees_jobs(compose.flower_port, auth), compose, 60)
    config = {**producer_config, "name": "third", "output_dir": str(runs / "third")}
    config.pop("cluster")
    sent = flower_call(compose.flower_port, auth, "/api/task/send-task/editbatch.job", {"kwargs": {"config": config}})
    result = wait_for("the Flower job ends", lambda: _ended(compose.flower_port, auth, sent["task-id"]), compose)
    assert result["state"] == "SUCCESS", result

    for name in ("qwen-image-edit-6gpu", "second", "third"):
        manifest, summary = read_run(runs / name)
        assert summary["ok"] == 6 and {r["status"] for r in manifest} == {"ok"}, (name, summary)
        # Every worker of the compose file served: items went to the gpuN queues the config names.
        assert {r["device"] for r in manifest} <= set(queues)
    redis.close()


def _pings(redis) -> bool:
    try:
        return bool(redis.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


def _flower_sees_jobs(port: int, auth: str) -> bool:
    try:
        return any(name.startswith("jobs@") for name in flower_call(port, auth, "/api/workers?refresh=1"))
    except OSError:
        return False


def _ended(port: int, auth: str, task_id: str):
    result = flower_call(port, auth, f"/api/task/result/{task_id}")
    return result if result.get("state") in ("SUCCESS", "FAILURE", "REVOKED") else None


def test_a_worker_host_from_its_compose_file_serves_a_run_on_the_shared_mount(tmp_path, sample_image):
    """docker-compose.worker-host.yml as written: its two workers join an outside Redis as b:0 and b:1, and
    a run whose dataset and output folder are on the shared mount ends with every item written by them."""
    from editbatch.cluster.redis_server import RedisServer

    server = RedisServer(tmp_path / "main-host-redis")
    broker = server.start()
    shared = "/mnt/shared"
    host = Rehearsal(tmp_path / "host-b", {"EDITBATCH_BROKER": broker, "EDITBATCH_NODE": "b",
                                           "EDITBATCH_SHARED": shared}, "docker-compose.worker-host.yml")
    try:
        for name in sorted(host.services):
            host.start(name)
        mount = host.path(shared)
        image = mount / "data" / "red.png"
        image.parent.mkdir(parents=True)
        shutil.copy(sample_image, image)
        config = {"name": "on-b", "dataset": {"path": str(write_dataset(mount / "data", simple_rows(8, image)))},
                  "output_dir": str(mount / "runs" / "on-b"), "model": SIMULATED,
                  "cluster": {"broker": broker, "devices": ["b:0", "b:1"], "ready_timeout_s": 120},
                  "schedule": {"mode": "balanced"}}
        path = tmp_path / "on-b.yaml"
        path.write_text(yaml.safe_dump(config))
        run = subprocess.run([str(REPO / ".venv" / "bin" / "editbatch"), "run", str(path)], capture_output=True,
                             text=True, timeout=240, cwd=tmp_path)
        logs = "\n".join(f"--- {n}\n{host.log(n)}" for n in host.procs)
        assert run.returncode == 0, run.stdout + run.stderr + logs
        manifest, summary = read_run(mount / "runs" / "on-b")
        assert summary["ok"] == 8 and {r["status"] for r in manifest} == {"ok"}, (summary, logs)
        assert {r["device"] for r in manifest} == {"b-gpu0", "b-gpu1"}
    finally:
        host.stop()
        server.stop()
