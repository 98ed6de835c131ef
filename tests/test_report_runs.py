"""Reports and summaries that stay true across the runs of one folder, and comparisons that say what differs.

A resume the next morning must not draw the night as barrier idle; a retry of one item must not report an
overhead of +300000%; two runs of one config must be told apart by their run ids.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from editbatch.report import write_report
from editbatch.report.run_folder import read_run_folder
from editbatch.report.timeline import build_timeline

from .conftest import REPO, SIM_DEVICES, read_jsonl, read_run, run_cli, simple_rows, write_config, write_dataset


def make_config(tmp_path, broker, image, *, n, seconds, mode="sync", params=None, name="c.yaml", seed=42,
                out="out"):
    dataset = write_dataset(tmp_path / "data", simple_rows(n, image))
    return write_config(tmp_path / name, name="night", dataset={"path": str(dataset)},
                        output_dir=str(tmp_path / out),
                        model={"type": "simulated", "path": "sim",
                               "params": {"seconds": seconds, "jitter": 0.3, **(params or {})}},
                        cluster={"broker": broker, "devices": SIM_DEVICES, "ready_timeout_s": 60},
                        schedule={"mode": mode, "task_timeout_s": 30, "seed": seed})


def test_a_resume_after_a_pause_is_its_own_segment_and_the_pause_is_no_barrier_idle(tmp_path, sim_cluster,
                                                                                     sample_image):
    url = sim_cluster["url"]
    config = make_config(tmp_path, url, sample_image, n=18, seconds=0.3)
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "editbatch", "run", str(config)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ((out / "manifest.jsonl").exists()
                                               and len(read_jsonl(out / "manifest.jsonl")) >= 6):
        time.sleep(0.05)
    assert run_cli("cancel", str(out), "--broker", url).returncode == 0
    first.wait(60)
    pause = 8.0  # well above any barrier wait a loaded machine makes, so only the pause itself can exceed it
    time.sleep(pause)
    resumed = run_cli("resume", str(out), "--broker", url, timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    manifest, summary = read_run(out)
    runs = {r["run"] for r in manifest}
    assert len(runs) == 2 and all(r["status"] == "ok" for r in manifest)
    assert [r["kind"] for r in summary["runs"]] == ["first", "resume"]
    assert summary["covers"]["kind"] == "resume" and summary["covers"]["items_run"] < 18
    assert summary["runs"][1]["run_id"] == summary["run_id"] != summary["runs"][0]["run_id"]

    timeline = build_timeline(read_run_folder(out))
    assert len(timeline.breaks) == 1 and "then run " + summary["run_id"] in timeline.breaks[0].label
    idle = [b for lane in timeline.lanes for b in lane.bars if b.kind == "idle"]
    assert all(b.end - b.start < pause for b in idle), [(b.label, b.end - b.start) for b in idle]
    # The drawn axis holds the work and a short break, not the pause.
    work = sum(max(r["finished_at"] for r in manifest if r["run"] == run)
               - min(r["started_at"] for r in manifest if r["run"] == run) for run in runs)
    assert timeline.span < work + pause / 2, (timeline.span, work)
    assert summary["barrier_idle_s"] < pause  # this run's own figure
    text = (out / "report.html").read_text()
    assert "this resume: " in text and "paused " in text


def test_a_retry_of_one_item_reports_sane_figures_and_keeps_the_first_runs_timings(tmp_path, sim_cluster,
                                                                                   sample_image):
    url = sim_cluster["url"]
    config = make_config(tmp_path, url, sample_image, n=9, seconds=0.05,
                         params={"fail_first": {"item-004": 2}, "call_log": str(tmp_path / "calls.jsonl")})
    first = run_cli("run", str(config), timeout=120)
    assert first.returncode == 1, first.stdout + first.stderr
    _, before = read_run(tmp_path / "out")
    time.sleep(3.0)  # the night between: a makespan measured from the first run's start would include it
    began = time.monotonic()
    retry = run_cli("retry", str(tmp_path / "out"), "--broker", url, timeout=120)
    lasted = time.monotonic() - began
    assert retry.returncode == 0, retry.stdout + retry.stderr
    manifest, summary = read_run(tmp_path / "out")
    assert all(r["status"] == "ok" for r in manifest)
    assert summary["covers"] == {**summary["covers"], "kind": "retry", "items_run": 1, "items": 9}
    # The retry's figures are the retry's own: its makespan fits in the command's lifetime, however loaded
    # the machine (a fixed bound on the overhead of one 0.05 s item is a bound on the machine's load).
    assert summary["makespan_s"] <= lasted, (summary["makespan_s"], lasted)
    assert summary["efficiency"] is None or 0 < summary["efficiency"] <= 1.0001
    assert summary["runs"][0]["makespan_s"] == before["makespan_s"]  # the first run's timings are kept
    header = (tmp_path / "out" / "report.html").read_text()
    assert "+36" not in header and re.search(r"this retry: 1 of 9 items", header), "retry not said in the header"


def test_a_comparison_names_runs_by_run_id_and_shows_what_differs(tmp_path, sim_cluster, sample_image):
    url = sim_cluster["url"]
    a = make_config(tmp_path, url, sample_image, n=3, seconds=0.01, name="a.yaml", out="a")
    b = make_config(tmp_path, url, sample_image, n=3, seconds=0.01, name="b.yaml", out="b", seed=7)
    assert run_cli("run", str(a)).returncode == 0 and run_cli("run", str(b)).returncode == 0
    ids = [json.loads((tmp_path / d / "run.json").read_text())["run_id"] for d in ("a", "b")]
    result = write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "compare.html")
    text = Path(result.html).read_text()
    assert f"night ({ids[0]})" in text and f"night ({ids[1]})" in text
    assert "seed 42" in text and "seed 7" in text
    assert "model path" not in text.split("differs", 1)[1].split("</tr>", 1)[0]  # the same in both: not listed


def test_zero_second_items_read_efficiency_and_overhead_as_not_applicable(sim_run):
    proc, manifest, summary = sim_run(8, mode="nosync", params={"seconds": 0.0})
    assert proc.returncode == 0, proc.stderr
    out = Path(proc.stdout.split("Outputs: ")[1].strip())
    # Not 0.000 and +30000%: null in summary.json with the reason, and n/a wherever it is shown.
    assert summary["efficiency"] is None and summary["overhead"] is None and "per-task" in summary["not_applicable"]
    assert "efficiency and overhead n/a (" in proc.stdout.split("Batch edit completed")[1].splitlines()[0]
    assert f"n/a ({summary['not_applicable']})" in (out / "report.html").read_text()
    status = run_cli("status", str(out))
    assert "schedule: efficiency and overhead n/a (" in status.stdout, status.stdout + status.stderr


def test_efficiency_applies_from_a_few_milliseconds_of_work_per_task():
    from editbatch.scheduling.metrics import MIN_TASK_WORK_S, Ratios, Timing, ratios

    def timings(work):
        return [Timing(k, "a", k * 1.0, k * 1.0 + work, work_s=work) for k in range(4)]

    none = ratios(timings(0.0), span=4.0, lower=0.01, ideal=0.02)
    assert (none.efficiency, none.overhead) == (None, None) and "0.00 ms of work per task" in none.not_applicable
    assert none.text().startswith("efficiency and overhead n/a (") and Ratios.of({}).shown("efficiency", "x") == "n/a"
    some = ratios(timings(MIN_TASK_WORK_S * 2), span=4.0, lower=2.0, ideal=3.2)
    assert some.not_applicable is None and some.efficiency == 0.5 and abs(some.overhead - 0.25) < 1e-9
    assert some.text() == "efficiency 0.500, overhead +25.0%"
    assert ratios([], span=0.0, lower=0.0, ideal=None).not_applicable == "no item ran on a device"
