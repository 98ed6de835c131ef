"""End-to-end runs of `editbatch run` against real simulated-model worker processes and a real Redis.

Every assertion reads what a user would read: exit codes, output files,
and the times the workers recorded in the manifest.
"""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from editbatch.scheduling import Timing
from editbatch.scheduling import metrics
from editbatch.seeding import item_seed

from .conftest import REPO, run_cli, simple_rows, write_dataset

G = 3  # simulated workers in the shared cluster


def timings(manifest):
    return [Timing(r["index"], r["device"], r["started_at"], r["finished_at"], r["batch"]) for r in manifest
            if r["started_at"] is not None]


@pytest.mark.parametrize("barrier", ["worker", "producer"])
def test_sync_mode_keeps_the_barrier_and_returns_input_order(sim_run, tmp_path, barrier):
    proc, manifest, summary = sim_run(14, mode="sync", params={"seconds": 0.05, "jitter": 0.5},
                                      schedule={"barrier": barrier})
    assert proc.returncode == 0, proc.stderr
    assert [r["index"] for r in manifest] == list(range(14))
    assert [r["id"] for r in manifest] == [f"item-{i:03d}" for i in range(14)]
    for r in manifest:
        assert r["status"] == "ok" and r["batch"] == r["index"] // G and r["device"] == f"cpu{r['index'] % G}"
        assert (tmp_path / "out-sync" / r["output"]).is_file()
    # The barrier: no task of batch k+1 starts before every task of batch k finished.
    for k in range(1, 5):
        previous_end = max(r["finished_at"] for r in manifest if r["batch"] == k - 1)
        assert min(r["started_at"] for r in manifest if r["batch"] == k) >= previous_end
    out = proc.stdout
    assert "Batch synchronization: ENABLED" in out and "Total batches: 5" in out
    assert "cpu0: 5 images -> [0, 3, 6, 9, 12]" in out
    for k in range(1, 6):
        assert f"Batch {k}/5 done in " in out
    assert "GPUs synced (slowest: cpu" in out
    assert summary["ok"] == 14 and summary["mode"] == "sync" and summary["barrier_idle_s"] > 0
    assert 0 < summary["efficiency"] <= 1 and summary["lower_bound_s"] <= summary["makespan_s"]
    assert summary["max_skew_observed"] < 1  # sync: the span always stays inside one batch


def test_nosync_sends_item_i_to_device_i_mod_g(sim_run):
    proc, manifest, summary = sim_run(10, mode="nosync")
    assert proc.returncode == 0, proc.stderr
    assert "Batch synchronization: DISABLED" in proc.stdout and "No-sync mode: All 10 tasks" in proc.stdout
    assert [r["device"] for r in manifest] == [f"cpu{i % G}" for i in range(10)]
    assert all(r["batch"] is None for r in manifest)
    # Each device ran its items in input order.
    for d in range(G):
        mine = [r for r in manifest if r["device"] == f"cpu{d}"]
        assert [r["index"] for r in sorted(mine, key=lambda r: r["started_at"])] == [r["index"] for r in mine]


def idle_while_waiting(manifest, tolerance):
    """(device, idle seconds) for every device gap while some item had not started yet."""
    found = []
    run_end = max(r["finished_at"] for r in manifest)
    for d in {r["device"] for r in manifest}:
        mine = sorted((r for r in manifest if r["device"] == d), key=lambda r: r["started_at"])
        ends = [(r["finished_at"], nxt["started_at"] if nxt else run_end) for r, nxt in zip(mine, mine[1:] + [None])]
        for free_at, busy_again in ends:
            # Every item of the run is waiting until it starts, whether or not the producer has sent it yet.
            waiting = [r for r in manifest if r["started_at"] > free_at + tolerance]
            if waiting and busy_again - free_at > tolerance:
                found.append((d, busy_again - free_at))
    return found


def test_balanced_never_leaves_a_device_idle_while_items_wait(sim_run):
    # cpu1 is three times slower: round-robin leaves the others idle at the end, a shared queue does not.
    params = {"seconds": 0.06, "jitter": 0.2, "device_speed": [1.0, 3.0, 1.0]}
    proc, manifest, summary = sim_run(24, mode="balanced", params=params)
    assert proc.returncode == 0, proc.stderr
    assert "[BALANCED]" in proc.stderr
    assert idle_while_waiting(manifest, tolerance=0.3) == []
    counts = {d: sum(r["device"] == d for r in manifest) for d in ("cpu0", "cpu1", "cpu2")}
    assert counts["cpu1"] < counts["cpu0"] and counts["cpu1"] < counts["cpu2"]

    proc, manifest, _ = sim_run(24, mode="nosync", params=params)
    assert idle_while_waiting(manifest, tolerance=0.3), "the check must see round-robin's idle devices"


def test_window_mode_bounds_the_skew(sim_run):
    params = {"seconds": 0.04, "jitter": 0.3, "device_speed": [1.0, 2.5, 1.0]}
    proc, manifest, summary = sim_run(30, mode="window", params=params, schedule={"max_skew": 1})
    assert proc.returncode == 0, proc.stderr
    observed = metrics.max_skew(timings(manifest), G)
    assert observed < 2 and summary["max_skew_observed"] == pytest.approx(observed, abs=1e-3)
    assert "Batch 10/10 done in" in proc.stdout and "[WINDOW]" in proc.stderr
    # Batch lines come out in order: a resume cursor.
    numbers = [int(m.group(1)) for m in re.finditer(r"^Batch (\d+)/10 done", proc.stdout, re.M)]
    assert numbers == list(range(1, 11))


@pytest.mark.parametrize("mode", ["sync", "nosync", "balanced", "window"])
def test_every_item_appears_exactly_once(sim_run, tmp_path, mode):
    proc, manifest, summary = sim_run(17, mode=mode, params={"seconds": 0.0})
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["id"] for r in manifest) == [f"item-{i:03d}" for i in range(17)]
    assert summary["ok"] == 17 and summary["items"] == 17
    assert len(list((tmp_path / f"out-{mode}" / "images").glob("*.png"))) == 17


def test_item_outputs_do_not_depend_on_mode_or_device(sim_run, tmp_path):
    _, sync_manifest, _ = sim_run(7, mode="sync")
    sync_images = {r["id"]: Image.open(tmp_path / "out-sync" / r["output"]).tobytes() for r in sync_manifest}
    _, nosync_manifest, _ = sim_run(7, mode="nosync", rows=list(reversed(simple_rows(7, _image(sync_manifest)))))
    for r in nosync_manifest:
        assert r["seed"] == next(s["seed"] for s in sync_manifest if s["id"] == r["id"])
        assert Image.open(tmp_path / "out-nosync" / r["output"]).tobytes() == sync_images[r["id"]]
    moved = [r["id"] for r in nosync_manifest
             if r["device"] != next(s["device"] for s in sync_manifest if s["id"] == r["id"])]
    assert moved, "reversing the order must move some items to other devices"


def _image(manifest):
    from pathlib import Path

    return Path(manifest[0]["inputs"][0])


def test_bad_items_are_recorded_and_the_rest_still_run(sim_run, tmp_path, sample_image):
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "empty.png").write_bytes(b"")
    (folder / "garbage.png").write_bytes(b"this is not an image at all")
    Image.new("RGBA", (8, 8), (1, 2, 3, 100)).save(folder / "rgba.png")
    Image.new("P", (8, 8)).save(folder / "palette.png")
    Image.new("L", (8, 8)).save(folder / "gray.png")
    rows = [
        {"id": "good-1", "image": str(sample_image), "instruction": "a"},
        {"id": "missing", "image": "nowhere.png", "instruction": "a"},
        {"id": "empty", "image": str(folder / "empty.png"), "instruction": "a"},
        {"id": "garbage", "image": str(folder / "garbage.png"), "instruction": "a"},
        {"id": "rgba", "image": str(folder / "rgba.png"), "instruction": "a"},
        {"id": "palette", "image": str(folder / "palette.png"), "instruction": "a"},
        {"id": "gray", "image": str(folder / "gray.png"), "instruction": "a"},
        {"id": "no-words", "image": str(sample_image), "instruction": "  "},
        {"id": "good-1", "image": str(sample_image), "instruction": "duplicate id"},
        {"id": "explodes", "image": str(sample_image), "instruction": "a"},
        {"id": "good-2", "image": str(sample_image), "instruction": "a"},
    ]
    proc, manifest, summary = sim_run(rows=rows, mode="sync", params={"seconds": 0.02, "fail_ids": ["explodes"]})
    assert proc.returncode == 1, proc.stderr
    status = {(r["index"], r["id"]): (r["status"], r["error"]) for r in manifest}
    assert len(manifest) == len(rows)
    expect = {
        (1, "missing"): "image file not found", (2, "empty"): "image file is empty",
        (3, "garbage"): "image cannot be decoded", (7, "no-words"): "empty instruction",
        (8, "good-1"): "duplicate id",
    }
    for key, words in expect.items():
        assert status[key][0] == "invalid" and words in status[key][1]
    assert status[(9, "explodes")][0] == "failed" and "simulated failure" in status[(9, "explodes")][1]
    for key in [(0, "good-1"), (4, "rgba"), (5, "palette"), (6, "gray"), (10, "good-2")]:
        assert status[key] == ("ok", None)
    assert summary["invalid"] == 5 and summary["failed"] == 1 and summary["ok"] == 5
    assert "explodes: RuntimeError: simulated failure" in proc.stdout  # listed at the end


def test_strict_refuses_invalid_items_before_running(sim_run):
    rows = [{"id": "a", "image": "nowhere.png", "instruction": "x"}]
    proc, manifest, _ = sim_run(rows=rows, extra_args=("--strict",))
    assert proc.returncode == 2 and manifest == []
    assert "1 invalid item(s) with --strict: a (line 1): image file not found" in proc.stderr


def test_a_lost_or_stuck_task_times_out_and_the_run_completes(sim_run, sample_image):
    rows = simple_rows(4, sample_image)
    rows[1]["params"] = {"seconds": 4.0}  # far beyond the timeout below
    proc, manifest, summary = sim_run(rows=rows, mode="nosync", params={"seconds": 0.01},
                                      schedule={"task_timeout_s": 1.0, "retries": 0})
    assert proc.returncode == 1
    by_id = {r["id"]: r for r in manifest}
    # The producer's timeout or the worker's watchdog (it ends its process), whichever notices first.
    assert by_id["item-001"]["status"] == "failed"
    assert any(why in by_id["item-001"]["error"] for why in ("no result within task_timeout_s=1s", "worker is gone"))
    assert [by_id[f"item-00{i}"]["status"] for i in (0, 2, 3)] == ["ok"] * 3


def test_a_lost_task_in_sync_mode_does_not_hold_the_next_batches(sim_run, sample_image):
    rows = simple_rows(9, sample_image)
    rows[1]["params"] = {"seconds": 3.0}
    proc, manifest, summary = sim_run(rows=rows, mode="sync", params={"seconds": 0.01},
                                      schedule={"task_timeout_s": 1.0, "retries": 0})
    assert proc.returncode == 1
    by_id = {r["id"]: r for r in manifest}
    assert by_id["item-001"]["status"] == "failed"
    assert any(why in by_id["item-001"]["error"] for why in ("no result within", "worker is gone"))
    # The other devices went on: batch 1 started once batch 0 was given up on, before the stuck task ended.
    assert by_id["item-000"]["status"] == by_id["item-002"]["status"] == "ok"
    assert by_id["item-003"]["status"] == "ok"
    assert by_id["item-003"]["started_at"] - by_id["item-000"]["started_at"] < 2.5
    assert sorted(by_id) == [f"item-00{i}" for i in range(9)]


def test_the_seed_projects_config_file_runs_in_sync_mode(tmp_path, sim_cluster, sample_image):
    dataset = write_dataset(tmp_path, simple_rows(6, sample_image))
    out = tmp_path / "seed-run"
    proc = run_cli("run", str(REPO / "configs" / "seed_multi_gpu.yaml"), "--set", f"dataset.path={dataset}",
                   "--set", f"output_dir={out}", "--set", "model.type=simulated", "--set", "model.path=sim",
                   "--set", f"cluster.broker={sim_cluster['url']}", "--set", "cluster.devices=[cpu, cpu, cpu]")
    assert proc.returncode == 0, proc.stderr
    assert "Batch synchronization: ENABLED" in proc.stdout and "Batch 2/2 done" in proc.stdout
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in manifest] == [0, 0, 0, 1, 1, 1]
    assert all(r["seed"] == item_seed(42, r["id"]) for r in manifest)


def test_tasks_left_by_an_interrupted_run_never_start(tmp_path, sim_cluster, sample_image):
    """Ctrl-C marks the run ended: its tasks still queued on the workers are skipped, not run later."""
    import signal
    import subprocess
    import sys
    import time

    from .conftest import as_in_a_terminal, read_jsonl, write_config

    calls = tmp_path / "calls.jsonl"
    dataset = write_dataset(tmp_path / "data", simple_rows(30, sample_image))
    out = tmp_path / "interrupted"
    config = write_config(tmp_path / "c.yaml", name="interrupted", dataset={"path": str(dataset)},
                          output_dir=str(out),
                          model={"type": "simulated", "path": "sim", "params": {"seconds": 1.0,
                                                                               "call_log": str(calls)}},
                          cluster={"broker": sim_cluster["url"], "devices": ["cpu", "cpu", "cpu"]},
                          schedule={"mode": "sync"})  # the next batch waits queued at the workers
    proc = subprocess.Popen([sys.executable, "-m", "editbatch", "run", str(config)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=as_in_a_terminal)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (calls.exists() and calls.read_text().count("\n") >= 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    ended = time.time()
    assert proc.returncode == 130
    time.sleep(4)  # long enough for the queued batch to have started, were it not skipped
    late = [c for c in read_jsonl(calls) if c["t"] > ended]
    assert late == []
    # The workers serve the next run at once.
    proc2, manifest, _ = _sim_run_again(tmp_path, sim_cluster, sample_image)
    assert proc2.returncode == 0 and [r["status"] for r in manifest] == ["ok"] * 3


def _sim_run_again(tmp_path, sim_cluster, sample_image):
    from .conftest import read_run, write_config

    dataset = write_dataset(tmp_path / "data2", simple_rows(3, sample_image))
    out = tmp_path / "next"
    config = write_config(tmp_path / "next.yaml", name="next", dataset={"path": str(dataset)}, output_dir=str(out),
                          model={"type": "simulated", "path": "sim", "params": {"seconds": 0.05}},
                          cluster={"broker": sim_cluster["url"], "devices": ["cpu", "cpu", "cpu"]},
                          schedule={"mode": "sync"})
    proc = run_cli("run", str(config))
    return (proc, *read_run(out))
