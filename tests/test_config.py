"""Config loading: our schema, the seed's legacy file, overrides, and errors that name file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from editbatch.config import load_config
from editbatch.errors import ConfigError

from .conftest import REPO, run_cli, write_config, write_dataset, simple_rows


@pytest.fixture
def dataset(tmp_path, sample_image) -> Path:
    return write_dataset(tmp_path, simple_rows(3, sample_image))


def base(dataset: Path, **changes) -> dict:
    config = {"name": "t", "dataset": {"path": str(dataset)}, "output_dir": "runs/t",
              "model": {"type": "simulated"}, "cluster": {"devices": ["cpu", "cpu"]}, "schedule": {"mode": "sync"}}
    config.update(changes)
    return config


def test_demo_config_loads_with_the_documented_shape():
    config = load_config(REPO / "configs" / "demo.yaml")
    assert config.model.type == "instruct_pix2pix" and config.model.path == "tiny"
    assert [d.queue for d in config.devices] == ["cpu0", "cpu1"]
    assert config.cluster.broker == "auto" and config.cluster.load_concurrency == 1
    assert config.schedule.mode == "sync" and config.schedule.seed == 42


@pytest.mark.parametrize("name", ["demo", "demo_scores", "flux_kontext", "instruct_pix2pix_gpu", "lora_eval",
                                  "qwen_image_edit_6gpu", "qwen_image_edit_plus", "service", "worker_host"])
def test_every_shipped_run_or_worker_config_loads(name):
    """What the README and compose files name must load as written (datasets live on the user's machine)."""
    config = load_config(REPO / "configs" / f"{name}.yaml", check_dataset=name.startswith("demo"))
    if name == "demo_scores":  # the README's Scores example: metrics only, offline, categories from the demo set
        assert config.evaluate is not None and config.evaluate.clip == "tiny" and config.evaluate.dino == "tiny"
        assert config.evaluate.group_by == "category"


def test_seed_file_loads_unchanged_and_maps_to_our_schema(dataset):
    seed_file = REPO / "configs" / "seed_multi_gpu.yaml"
    config = load_config(seed_file, [f"dataset.path={dataset}"])
    assert config.model.type == "qwen_image_edit"
    assert [d.queue for d in config.devices] == [f"gpu{i}" for i in range(6)]
    assert config.schedule.mode == "sync" and config.schedule.seed == 42
    nosync = load_config(seed_file, [f"dataset.path={dataset}", "diffusion_model.params.enable_batch_sync=false"])
    assert nosync.schedule.mode == "nosync"


def test_overrides_parse_yaml_values(tmp_path, dataset):
    path = write_config(tmp_path / "c.yaml", **base(dataset))
    config = load_config(path, ["schedule.mode=nosync", "cluster.devices=[0, 1, 2]", "model.params.seconds=0.5"])
    assert config.schedule.mode == "nosync"
    assert [d.queue for d in config.devices] == ["gpu0", "gpu1", "gpu2"]
    assert config.model.params == {"seconds": 0.5}


@pytest.mark.parametrize("change, field, words", [
    ({"schedule": {"mode": "fast"}}, "schedule.mode", "sync"),
    ({"schedule": {"mdoe": "sync"}}, "schedule.mdoe", "did you mean 'mode'"),
    ({"cluster": {"devices": ["gpu0"]}}, "cluster.devices", "neither a CUDA index"),
    ({"cluster": {"devices": [0, 0]}}, "cluster.devices", "listed twice"),
    ({"cluster": {"load_concurrency": 0}}, "cluster.load_concurrency", "greater than or equal to 1"),
    ({"cluster": {"broker": "amqp://x"}}, "cluster.broker", "redis://"),
    ({"model": {"type": "instruct_pix2pixx"}}, "model.type", "did you mean 'instruct_pix2pix'"),
    ({"model": {"type": "simulated", "dtype": "fp8"}}, "model.dtype", "float32"),
])
def test_bad_config_exits_2_naming_file_and_field(tmp_path, dataset, change, field, words):
    path = write_config(tmp_path / "bad.yaml", **base(dataset, **change))
    proc = run_cli("validate", str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert f"{path}: {field}" in lines[0] and words in lines[0]


def test_missing_dataset_file_is_a_config_error(tmp_path, dataset):
    path = write_config(tmp_path / "c.yaml", **base(tmp_path / "nope.jsonl"))
    proc = run_cli("run", str(path))
    assert proc.returncode == 2
    assert f"{path}: dataset.path: dataset file not found" in proc.stderr


def test_missing_config_and_broken_yaml(tmp_path):
    assert "config file not found" in run_cli("validate", str(tmp_path / "none.yaml")).stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    proc = run_cli("run", "--config", str(broken))
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr


def test_bad_override_is_reported(tmp_path, dataset):
    path = write_config(tmp_path / "c.yaml", **base(dataset))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(path, ["schedule.mode"])


def test_unreachable_broker_and_bad_device_are_one_line_errors(tmp_path, dataset):
    path = write_config(tmp_path / "c.yaml", **base(dataset, cluster={"broker": "redis://:x@127.0.0.1:1/0",
                                                                     "devices": ["cpu"]}))
    proc = run_cli("run", str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "broker unreachable or refusing us: ConnectionError" in proc.stderr
    proc = run_cli("worker", "--config", str(path), "--device", "gpu0")
    assert proc.returncode == 2 and "--device: device 'gpu0' is neither a CUDA index" in proc.stderr
