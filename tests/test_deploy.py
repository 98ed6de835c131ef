"""docker-compose.yml: parsed by `docker compose config` where the plugin exists, and checked for what
operators rely on."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from editbatch.config import load_config

from .conftest import REPO


def compose_has_plugin() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


def test_compose_file_declares_redis_with_password_one_worker_per_gpu_flower_and_producer():
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = data["services"]
    assert "requirepass" in " ".join(services["redis"]["command"])
    workers = sorted(s for s in services if s.startswith("worker-gpu"))
    assert workers == [f"worker-gpu{i}" for i in range(6)]
    for i, name in enumerate(workers):
        svc = services[name]
        command = " ".join(svc["command"]) if isinstance(svc["command"], list) else svc["command"]
        assert f"--device {i}" in command
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["device_ids"] == [str(i)]
    assert "flower" in " ".join(services["flower"]["command"] if isinstance(services["flower"]["command"], list)
                                else [services["flower"]["command"]])
    assert services["producer"]["profiles"] == ["run"]


def test_compose_config_parses():
    if not compose_has_plugin():
        pytest.skip("docker compose plugin absent here; the structural test above still checks the file")
    env = {**os.environ, "REDIS_PASSWORD": "check", "FLOWER_PASSWORD": "check"}
    proc = subprocess.run(["docker", "compose", "-f", "docker-compose.yml", "--profile", "run", "config", "-q"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_config_used_by_compose_is_valid():
    config = load_config(REPO / "configs" / "qwen_image_edit_6gpu.yaml", check_dataset=False)
    assert [d.queue for d in config.devices] == [f"gpu{i}" for i in range(6)]
    assert config.model.type == "qwen_image_edit" and config.model.dtype == "bfloat16"


def test_compose_runs_the_coordinator_with_a_valid_cluster_config(monkeypatch):
    from editbatch.jobs.serve import load_cluster_config

    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    command = services["coordinator"]["command"]
    assert command[:2] == ["editbatch", "serve"] and "producer" in services
    monkeypatch.setenv("EDITBATCH_BROKER", "redis://:x@redis:6379/0")
    config = load_cluster_config(REPO / command[command.index("--config") + 1].replace("/workspace/", ""))
    assert [d.queue for d in config.devices] == [f"gpu{i}" for i in range(6)] and config.jobs.max_queued == 100


def test_compose_workers_and_coordinator_share_one_config_and_no_password_is_on_a_command_line():
    """The structure the rehearsal (test_compose_rehearsal.py) relies on, checked without starting anything."""
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]

    def config_of(name):
        command = services[name]["command"]
        return command[command.index("--config") + 1]

    workers = [n for n in services if n.startswith("worker-gpu")]
    assert {config_of(n) for n in workers} == {config_of("coordinator")}
    for name, service in services.items():
        if name != "redis":  # Redis gets its password on stdin, from its environment
            assert "PASSWORD" not in " ".join(service["command"]), name
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]


def test_the_service_config_is_a_worker_config():
    from editbatch.workers.roots import roots_for

    config = load_config(REPO / "configs" / "service.yaml", check_dataset=False)
    assert [d.queue for d in config.devices] == [f"gpu{i}" for i in range(6)]
    assert roots_for(config).outputs == ("/workspace/runs",) and roots_for(config).inputs == ("/workspace/data",)


def test_worker_host_compose_file_starts_only_workers_named_by_node_against_an_outside_redis():
    data = yaml.safe_load((REPO / "docker-compose.worker-host.yml").read_text())
    services = data["services"]
    assert sorted(services) == ["worker-gpu0", "worker-gpu1"]  # no Redis, Flower or producer on a worker host
    for i, name in enumerate(sorted(services)):
        svc = services[name]
        assert " ".join(svc["command"]).endswith(f"--device ${{EDITBATCH_NODE:?set EDITBATCH_NODE}}:{i}")
        assert svc["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == [str(i)]
        assert svc["environment"]["EDITBATCH_BROKER"].startswith("${EDITBATCH_BROKER:?")
        shared = "${EDITBATCH_SHARED:?set EDITBATCH_SHARED}"
        assert f"{shared}:{shared}" in svc["volumes"]  # the same path inside as on the host
