"""Small things users meet first: validate's checks, hints, one-line errors, logs that read well."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from editbatch.cluster.redis_server import RedisServer
from editbatch.config import load_config
from editbatch.errors import ConfigError
from editbatch.preflight import check_lora

from .conftest import REPO, run_cli, simple_rows, write_config, write_dataset


@pytest.fixture
def make_config(tmp_path, sample_image):
    dataset = write_dataset(tmp_path, simple_rows(2, sample_image))

    def make(**sections):
        body = {"dataset": {"path": str(dataset)}, "output_dir": str(tmp_path / "out"),
                "model": {"type": "simulated"}, "cluster": {"devices": ["cpu"]}, **sections}
        return write_config(tmp_path / "c.yaml", **body)

    return make


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_validate_checks_simulated_params(make_config):
    config = make_config(model={"type": "simulated", "params": {"seconds": 1, "jiter": 0.2}})
    one_line_error(run_cli("validate", str(config)), "c.yaml: model.params.jiter", "did you mean 'jitter'")


def test_validate_checks_pipeline_params_against_the_call_signature(make_config):
    config = make_config(model={"type": "instruct_pix2pix", "path": "tiny", "params": {"num_inference_step": 4}})
    line = one_line_error(run_cli("validate", str(config)), "c.yaml: model.params.num_inference_step",
                          "StableDiffusionInstructPix2PixPipeline", "did you mean 'num_inference_steps'")
    assert line.startswith("editbatch: error: ")
    good = make_config(model={"type": "instruct_pix2pix", "path": "tiny",
                              "params": {"num_inference_steps": 4, "image_guidance_scale": 1.5, "size": "native"}})
    assert run_cli("validate", str(good)).returncode == 0


def test_validate_refuses_cuda_devices_without_cuda(make_config):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check has nothing to refuse")
    config = make_config(cluster={"devices": [0, 1]})
    one_line_error(run_cli("validate", str(config)), "c.yaml: cluster.devices", "no CUDA")


def test_validate_checks_the_lora(make_config, tmp_path, monkeypatch):
    config = make_config(model={"type": "simulated", "lora": {"path": str(tmp_path / "missing-lora")}})
    one_line_error(run_cli("validate", str(config)), "c.yaml: model.lora.path", "LoRA not found")
    (tmp_path / "lora").mkdir()
    config = make_config(model={"type": "simulated", "lora": {"path": str(tmp_path / "lora")}})
    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    with pytest.raises(ConfigError, match="model.lora: a LoRA needs peft"):
        check_lora(load_config(config), str(config))


def test_misspelled_top_level_key_gets_its_hint(make_config, tmp_path):
    config = make_config()
    text = config.read_text().replace("model:", "modle:")
    config.write_text(text)
    one_line_error(run_cli("validate", str(config)), "c.yaml: modle: unknown key; did you mean 'model'?")


def test_make_tiny_with_an_unknown_family_is_one_line(tmp_path):
    one_line_error(run_cli("make-tiny", "instruct_pix2pixx", str(tmp_path / "t")), "make-tiny: FAMILY",
                   "did you mean 'instruct_pix2pix'?")


def test_progress_in_a_log_file_is_plain_lines(sim_run):
    proc, _, _ = sim_run(9, mode="balanced")
    assert proc.returncode == 0
    assert "\r" not in proc.stderr and "\r" not in proc.stdout
    assert "[BALANCED] Editing images: 9/9 done (100%)" in proc.stderr


def test_auto_cluster_worker_logs_show_the_model_load(make_config, tmp_path):
    config = make_config(model={"type": "simulated", "params": {"load_seconds": 0.3}},
                         cluster={"broker": "auto", "devices": ["cpu"]})
    proc = run_cli("run", str(config))
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "out" / "logs" / "worker-cpu0.log").read_text()
    assert "cpu0@" in log and "model load started: simulated (tiny" in log
    assert "model load finished: simulated (tiny) loaded in 0.3" in log


def test_plain_celery_worker_logs_the_model_load(make_config, tmp_path):
    config = make_config(model={"type": "simulated", "params": {"load_seconds": 0.2}})
    redis = RedisServer()
    url = redis.start()
    env = {**os.environ, "EDITBATCH_BROKER": url, "EDITBATCH_DEVICE": "cpu0", "EDITBATCH_CONFIG": str(config)}
    log = tmp_path / "celery.log"
    with log.open("w") as fh:
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "editbatch.celery_app", "worker", "-P",
                                   "threads", "-c", "1", "-n", "cpu0@%h", "--loglevel", "INFO"],
                                  cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and " ready." not in log.read_text():
            time.sleep(0.2)
        text = log.read_text()
        assert "model load started: simulated (tiny" in text, text[-3000:]
        assert "model load finished: simulated (tiny) loaded in 0.2" in text
    finally:
        worker.terminate()
        worker.wait(20)
        redis.stop()


def test_dataset_problems_name_their_line_in_the_file(tmp_path, sample_image):
    lines = [json.dumps({"id": "a", "image": str(sample_image), "instruction": "x"}), "",
             "{not json", json.dumps({"id": "b", "image": str(sample_image), "instruction": ""}),
             json.dumps({"id": "c", "image": str(sample_image), "instruction": "y"})]
    dataset = tmp_path / "data.jsonl"
    dataset.write_text("\n".join(lines) + "\n")
    config = write_config(tmp_path / "c.yaml", dataset={"path": str(dataset)}, output_dir=str(tmp_path / "out"),
                          model={"type": "simulated"}, cluster={"devices": ["cpu"]})
    checked = run_cli("validate", str(config))
    assert checked.returncode == 1
    assert "line00003 (line 3): not valid JSON" in checked.stdout, checked.stdout
    assert "b (line 4): empty instruction" in checked.stdout, checked.stdout
    strict = run_cli("run", str(config), "--strict")
    one_line_error(strict, "2 invalid item(s) with --strict", "(line 3): not valid JSON", "b (line 4): empty")
    csv_file = tmp_path / "data.csv"
    csv_file.write_text(f'id,image,instruction\na,{sample_image},"two\nlines"\nb,{sample_image},\n')
    config = write_config(tmp_path / "c.yaml", dataset={"path": str(csv_file)}, output_dir=str(tmp_path / "out"),
                          model={"type": "simulated"}, cluster={"devices": ["cpu"]})
    assert "b (line 4): empty instruction" in run_cli("validate", str(config)).stdout


def test_status_and_cancel_of_a_missing_folder_say_so(tmp_path):
    for command in ("status", "cancel"):
        one_line_error(run_cli(command, str(tmp_path / "typo")), "typo: no such run folder")
        one_line_error(run_cli(command, "typo", env={"EDITBATCH_BROKER": ""}), "typo: no such run folder",
                       "for a job id, pass --broker")


def test_a_worker_that_cannot_reach_redis_says_so(make_config):
    config = make_config()
    proc = run_cli("worker", "--config", str(config), "--device", "cpu", "--broker", "redis://:secret@127.0.0.1:1/0",
                   timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "editbatch worker cpu0: cannot reach Redis at redis://:***@127.0.0.1:1/0" in proc.stderr, proc.stderr
    assert "secret" not in proc.stderr and "model failed to load" not in proc.stderr
