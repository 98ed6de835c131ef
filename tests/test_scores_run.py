"""Scores in a run: metrics computed by the workers right after each edit, kept by a resume, aggregated by
`editbatch score`; a folder of outputs from another tool scored by id; config errors in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from .conftest import SIM_DEVICES, read_jsonl, read_run, run_cli, write_config, write_dataset

METRICS = ["l1_input", "ssim_input", "psnr_target", "l2_target", "clip_i_target", "clip_t", "clip_dir",
           "dino_input", "dino_target"]


def rows_with_targets(folder: Path, n: int) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), (200, 20, 20)).save(folder / "in.png")
    Image.new("RGB", (32, 24), (20, 200, 20)).save(folder / "target.png")
    return [{"id": f"s{i}", "image": "in.png", "target": "target.png", "instruction": f"make it green {i}",
             "task_type": ["color", "style"][i % 2], "language": "en", "input_caption": "a red square",
             "output_caption": "a green square"} for i in range(n)]


def test_workers_score_each_edit_and_score_aggregates_per_category(tmp_path, sim_cluster):
    data = tmp_path / "data"
    dataset = write_dataset(data, rows_with_targets(data, 6) + [{"id": "plain", "image": "in.png",
                                                                 "instruction": "no target", "task_type": "color"}])
    out = tmp_path / "out"
    config = write_config(tmp_path / "run.yaml", name="scored", dataset={"path": str(dataset)}, output_dir=str(out),
                          model={"type": "simulated", "path": "sim", "params": {"seconds": 0.01}},
                          cluster={"broker": sim_cluster["url"], "devices": SIM_DEVICES, "ready_timeout_s": 60},
                          schedule={"mode": "nosync", "task_timeout_s": 60},
                          evaluate={"metrics": METRICS, "group_by": "task_type", "bootstrap": 200})
    proc = run_cli("run", str(config))
    assert proc.returncode == 0, proc.stderr
    manifest, _ = read_run(out)
    first = {r["id"]: r for r in manifest}
    s0 = first["s0"]
    assert s0["target"].endswith("target.png") and s0["columns"]["task_type"] == "color"
    assert s0["columns"]["language"] == "en"
    assert set(s0["scores"]["metrics"]) == set(METRICS)
    assert s0["scores"]["metrics"]["l1_input"] > 0 and -1 <= s0["scores"]["metrics"]["clip_dir"] <= 1
    assert s0["scores"]["score_s"] > 0
    # No target and no captions: what needs them is named as missing, never made up.
    assert set(first["plain"]["scores"]["missing"]) == {"psnr_target", "l2_target", "clip_i_target",
                                                         "dino_target", "clip_dir"}
    record = json.loads((out / "records" / "s0.json").read_text())
    assert record["scores"]["metrics"] == s0["scores"]["metrics"]  # the ledger keeps them: a resume reuses them

    resumed = run_cli("run", str(config), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    again = {r["id"]: r for r in read_jsonl(out / "manifest.jsonl")}
    assert again["s0"]["reused"] and again["s0"]["scores"]["metrics"] == s0["scores"]["metrics"]

    scored = run_cli("score", str(out))
    assert scored.returncode == 0, scored.stderr
    summary = json.loads((out / "scores.json").read_text())
    assert summary["group_by"] == "task_type" and summary["scored"] == 7
    l1 = summary["scores"]["l1_input"]
    assert l1["micro"]["n"] == 7 and set(l1["by_category"]) == {"color", "style"}
    assert l1["by_category"]["color"]["n"] == 4 and l1["by_category"]["style"]["n"] == 3
    low, high = l1["micro"]["ci95"]
    assert low <= l1["micro"]["mean"] <= high
    assert summary["scores"]["psnr_target"]["micro"]["n"] == 6  # the item without a target has none
    lines = {r["id"]: r for r in read_jsonl(out / "scores.jsonl")}
    assert lines["s0"]["scores"]["metrics"] == s0["scores"]["metrics"]  # taken from the workers, not recomputed


def test_score_a_folder_of_outputs_from_another_tool(tmp_path):
    data = tmp_path / "data"
    rows = rows_with_targets(data, 4)
    dataset = write_dataset(data, rows)
    folder = tmp_path / "theirs"
    folder.mkdir()
    for i, row in enumerate(rows[:3]):  # the last item has no output
        Image.new("RGB", (64, 48), (20, 200 - 40 * i, 20)).save(folder / f"{row['id']}.jpg" if i else
                                                                folder / f"{row['id']}.png")
    config = write_config(tmp_path / "eval.yaml", evaluate={"preset": "magicbrush", "bootstrap": 200})
    proc = run_cli("score", str(folder), "--dataset", str(dataset), "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((folder / "scores.json").read_text())
    assert summary["preset"] == "magicbrush" and summary["no_output"] == ["s3"]
    l1 = summary["scores"]["l1_target"]["micro"]
    assert l1["n"] == 3 and l1["mean"] > 0
    lines = {r["id"]: r for r in read_jsonl(folder / "scores.jsonl")}
    assert lines["s0"]["scores"]["metrics"]["l1_target"] == pytest.approx(0.0, abs=1e-9)  # the target itself
    assert "l1_target" in proc.stdout


@pytest.mark.parametrize("section, field, words", [
    ({"metrics": ["clip_x"]}, "evaluate.metrics", "unknown metric 'clip_x'"),
    ({"preset": "gedit"}, "evaluate", "add evaluate.judge"),
    ({"preset": "gedit", "judge": {"url": "http://127.0.0.1:1/v1", "model": "gpt-4o"}}, "evaluate.judge",
     "has no date"),
])
def test_evaluate_errors_name_file_and_field(tmp_path, section, field, words):
    config = write_config(tmp_path / "eval.yaml", evaluate=section)
    folder = tmp_path / "f"
    folder.mkdir()
    proc = run_cli("score", str(folder), "--dataset", "x.jsonl", "--config", str(config))
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert line.count("\n") == 0 and f"eval.yaml: {field}" in line and words in line, line


def test_report_shows_scores_per_category_and_paired_differences(tmp_path, sim_cluster):
    data = tmp_path / "data"
    dataset = write_dataset(data, rows_with_targets(data, 8))
    outs = []
    for seed in (1, 2):
        out = tmp_path / f"out{seed}"
        config = write_config(tmp_path / f"run{seed}.yaml", name=f"seed{seed}", dataset={"path": str(dataset)},
                              output_dir=str(out), model={"type": "simulated", "path": "sim",
                                                          "params": {"seconds": 0.01}},
                              cluster={"broker": sim_cluster["url"], "devices": SIM_DEVICES, "ready_timeout_s": 60},
                              schedule={"mode": "nosync", "task_timeout_s": 60, "seed": seed},
                              evaluate={"metrics": ["l1_target", "psnr_input"], "group_by": "task_type",
                                        "bootstrap": 200})
        proc = run_cli("run", str(config))
        assert proc.returncode == 0, proc.stderr
        assert (out / "scores.json").is_file() and "l1_target: micro" in proc.stdout  # scored at the end of the run
        outs.append(out)
    proc = run_cli("report", str(outs[0]), str(outs[1]))
    assert proc.returncode == 0, proc.stderr
    page = (outs[0] / "report.html").read_text()
    assert 'id="scores"' in page and "scores.png" in page and (outs[0] / "scores.png").stat().st_size > 1000
    assert "Paired differences" in page and "macro (mean of categories)" in page
    assert 'data-rank="' in page and "sort by score, worst first" in page
    assert "l1_target 0." in page  # each output's scores under it


def test_private_workers_load_the_scorers_with_the_model(tmp_path):
    """broker: auto: the run's metrics are loaded at start-up, in the model's load slot and load time."""
    data = tmp_path / "data"
    dataset = write_dataset(data, rows_with_targets(data, 3))
    out = tmp_path / "out"
    config = write_config(tmp_path / "auto.yaml", name="auto", dataset={"path": str(dataset)}, output_dir=str(out),
                          model={"type": "simulated", "path": "sim", "params": {"seconds": 0.01}},
                          cluster={"broker": "auto", "devices": ["cpu"]},
                          evaluate={"metrics": ["l1_target", "clip_i_input", "dino_target"]})
    proc = run_cli("run", str(config))
    assert proc.returncode == 0, proc.stderr
    log = next((out / "logs").glob("worker-*.log")).read_text()
    assert "scorers l1_target, clip_i_input, dino_target loaded with the model" in log
    assert "loaded on first use" not in log
    manifest, _ = read_run(out)
    assert all(set(r["scores"]["metrics"]) == {"l1_target", "clip_i_input", "dino_target"} for r in manifest)


def test_a_template_that_does_not_format_is_a_config_error(tmp_path):
    template = tmp_path / "t.txt"
    template.write_text('Answer {"score": 1-5} for {instruction}')
    config = write_config(tmp_path / "eval.yaml", evaluate={"preset": "imgedit", "judge": {
        "url": "http://127.0.0.1:1/v1", "model": "m-2026-01-01", "template": str(template)}})
    folder = tmp_path / "f"
    folder.mkdir()
    proc = run_cli("score", str(folder), "--dataset", "x.jsonl", "--config", str(config))
    assert proc.returncode == 2 and "eval.yaml: evaluate: judge.template" in proc.stderr
    assert "literal braces" in proc.stderr
