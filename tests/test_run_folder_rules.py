"""One run per folder, items that were never run, and rounds that end.

- a second run into a folder while the first lives is refused with one line naming the holder, and a
  holder killed with SIGKILL leaves the folder free;
- a cancelled run's unsent items are `not_run` (manifest, summary, status), not `failed`; `retry` runs
  the failed items only, `resume` the rest; `retry` with nothing failed starts nothing;
- an item that no live worker takes (nobody consumes its queue) fails after its attempts instead of
  being sent again forever.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import pytest

from editbatch.celery_app import make_app
from editbatch.producer.outputs import read_manifest

from .conftest import REPO, fill, read_jsonl, read_run, run_cli, simple_rows, stop_worker, write_config, write_dataset


def config_for(tmp_path, image, broker, *, n, mode="balanced", params=None, schedule=None, devices=("cpu",) * 3):
    dataset = write_dataset(tmp_path / "data", simple_rows(n, image))
    calls = tmp_path / "calls.jsonl"
    config = write_config(tmp_path / "c.yaml", name="rules", dataset={"path": str(dataset)},
                          output_dir=str(tmp_path / "out"),
                          model={"type": "simulated", "path": "sim",
                                 "params": {"seconds": 0.5, "call_log": str(calls), **(params or {})}},
                          cluster={"broker": broker, "devices": list(devices), "ready_timeout_s": 60},
                          schedule={"mode": mode, "task_timeout_s": 30, **(schedule or {})})
    return config, calls


def wait_lines(path, count, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (path.exists() and path.read_text().count("\n") >= count):
        time.sleep(0.05)
    assert path.exists() and path.read_text().count("\n") >= count, f"{path}: fewer than {count} lines"


def test_a_live_run_holds_its_folder_and_a_killed_one_lets_go(tmp_path, sim_cluster, sample_image):
    # 3 s items: the first run still holds the folder while the three refused runs start (seconds each on a
    # loaded machine); the test checks that it does before each refusal.
    config, calls = config_for(tmp_path, sample_image, sim_cluster["url"], n=12, params={"seconds": 3.0})
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "editbatch", "run", str(config)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_lines(calls, 2)
        run_id = json.loads((out / "run.json").read_text())["run_id"]
        for extra in ((), ("--resume",), ("--overwrite",)):
            assert first.poll() is None, "the first run ended before the refusals were tried"
            second = run_cli("run", str(config), *extra, timeout=60)
            assert second.returncode == 2, second.stderr
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
            assert f"output_dir: {out} is in use by run {run_id} (pid {first.pid} on {socket.gethostname()}" \
                   in lines[0], lines[0]
        assert all(line["status"] == "ok" for line in read_jsonl(out / "manifest.jsonl"))  # untouched by them
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    resumed = run_cli("run", str(config), "--resume", timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    manifest, _ = read_run(out)
    assert len(manifest) == 12 and all(r["status"] == "ok" for r in manifest)


def status_text(out, broker):
    proc = run_cli("status", str(out), "--broker", broker)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_cancelled_items_are_not_run_retry_runs_failed_ones_and_resume_the_rest(tmp_path, sim_cluster,
                                                                                  sample_image):
    url = sim_cluster["url"]
    # item-001 fails both of its attempts; everything takes 0.6 s, so a cancel leaves most items unsent.
    config, calls = config_for(tmp_path, sample_image, url, n=15, params={"seconds": 0.6,
                                                                          "fail_first": {"item-001": 2}})
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "editbatch", "run", str(config)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_lines(calls, 6)
    assert run_cli("cancel", str(out), "--broker", url).returncode == 0
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    manifest, summary = read_run(out)
    by_status = Counter(r["status"] for r in manifest)
    assert len(manifest) == 15 and by_status["not_run"] >= 4, by_status
    assert by_status["failed"] == 1 and {r["id"] for r in manifest if r["status"] == "failed"} == {"item-001"}
    assert all("not run" not in r["errors"] for r in manifest)  # a not-run item has no failed attempt
    assert summary["not_run"] == by_status["not_run"] and summary["failed"] == 1 and summary["state"] == "cancelled"
    text = status_text(out, url)
    assert "): cancelled" in text.splitlines()[0], text
    assert f"{by_status['ok']} ok, 1 failed, 0 invalid, {by_status['not_run']} not run" in text, text

    not_run = {r["id"] for r in manifest if r["status"] == "not_run"}
    computed = Counter(c["id"] for c in read_jsonl(calls))
    retry = run_cli("retry", str(out), "--broker", url, timeout=120)
    assert retry.returncode == 0, retry.stdout + retry.stderr  # item-001's third call succeeds
    after = Counter(c["id"] for c in read_jsonl(calls))
    assert set(after - computed) == {"item-001"}, after - computed  # the failed item only (once more, or twice)
    manifest, summary = read_run(out)
    still = {r["id"] for r in manifest if r["status"] == "not_run"}
    # An edit in flight at the cancel is recorded not_run by the stopped run ("run cancelled before this item
    # finished"); if it ended before its worker's next stop check, its record is in the ledger, and the retry
    # takes it from there: computed once, before the retry, never again.
    assert still <= not_run and all(computed[i] == 1 for i in not_run - still), (not_run, still, computed)

    resume = run_cli("resume", str(out), "--broker", url, timeout=120)
    assert resume.returncode == 0, resume.stdout + resume.stderr
    final = Counter(c["id"] for c in read_jsonl(calls))
    assert set(final - after) == still and max((final - after).values(), default=1) == 1
    manifest, summary = read_run(out)
    assert all(r["status"] == "ok" for r in manifest) and summary["not_run"] == 0

    started = time.monotonic()
    nothing = run_cli("retry", str(out), "--broker", url, timeout=60)
    assert nothing.returncode == 0 and "Nothing to retry" in nothing.stdout, nothing.stdout + nothing.stderr
    assert "Waiting for" not in nothing.stdout and time.monotonic() - started < 10
    assert Counter(c["id"] for c in read_jsonl(calls)) == final


@pytest.fixture
def lone_worker(tmp_path, redis_url, sample_image):
    """One worker started by hand on the test's Redis; yields (config, calls, worker name)."""
    config, calls = config_for(tmp_path, sample_image, redis_url, n=4, devices=("cpu",), params={"seconds": 0.1},
                               schedule={"task_timeout_s": 3, "retries": 1})
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "editbatch", "worker", "--config", str(config), "--device", "cpu"],
                            cwd=REPO, env={**os.environ, "EDITBATCH_BROKER": redis_url}, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        yield config, calls, f"cpu0@{socket.gethostname()}"
    finally:
        stop_worker(proc, 20)
        log.close()


def test_items_nobody_consumes_fail_after_their_attempts(tmp_path, redis_url, lone_worker):
    config, calls, name = lone_worker
    app = make_app(redis_url)
    deadline = time.monotonic() + 60
    from editbatch.models.identity import model_identity, shared_queue
    from editbatch.config import load_config

    queue = shared_queue(model_identity(load_config(config).model))
    while time.monotonic() < deadline:
        replies = app.control.cancel_consumer(queue, destination=[name], reply=True, timeout=1.0)
        if replies:
            break
        time.sleep(0.5)
    assert replies, "the worker never answered"
    started = time.monotonic()
    proc = run_cli("run", str(config), timeout=120)
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    manifest, summary = read_run(tmp_path / "out")
    assert [r["status"] for r in manifest] == ["failed"] * 4 and summary["failed"] == 4
    assert all("never started after 3 sends" in r["error"] for r in manifest), [r["error"] for r in manifest]
    assert not calls.exists()  # nothing was computed
    print(f"4 unconsumed items failed in {took:.1f}s (task_timeout_s=3, retries=1)")
    app.close()


def test_a_full_disk_stops_the_run_in_one_line_and_resume_finishes_it(tmp_path, sim_cluster, sample_image,
                                                                       small_disk):
    url = sim_cluster["url"]
    config, calls = config_for(tmp_path, sample_image, url, n=12, params={"seconds": 0.1})
    out = small_disk / "out"
    write_config(config, **{**__import__("yaml").safe_load(config.read_text()), "output_dir": str(out)})
    fill(small_disk, leave=64 * 1024)
    proc = run_cli("run", str(config), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("[BALANCED] Editing")]
    assert "Traceback" not in proc.stderr and len(errors) == 1 and errors[0].startswith("editbatch: error: "), \
        proc.stderr
    assert "No space left on device" in proc.stderr or "cannot be written" in proc.stderr, proc.stderr
    records = {p.stem for p in (out / "records").glob("*.json")}
    if (out / "manifest.jsonl").exists():
        for record in read_manifest(out / "manifest.jsonl"):  # an append cut short by the full disk is skipped
            if record["status"] == "ok":  # never ok without its image and its record
                assert (out / record["output"]).is_file() and record["id"] in records, record
    computed_before = Counter(c["id"] for c in read_jsonl(calls)) if calls.exists() else Counter()

    (small_disk / "filler").unlink()
    resumed = run_cli("resume", str(out), "--broker", url, timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    manifest, summary = read_run(out)
    assert len(manifest) == 12 and all(r["status"] == "ok" and (out / r["output"]).is_file() for r in manifest)
    computed = Counter(c["id"] for c in read_jsonl(calls))
    done_first = {i for i in records}
    assert all(computed[i] == computed_before[i] for i in done_first), "an item done before the resume ran again"
    print(f"done before the disk filled: {len(done_first)} of 12")


def test_a_private_redis_on_a_full_disk_stops_the_run_in_one_line_and_resume_finishes_it(tmp_path, sample_image,
                                                                                         small_disk):
    """With `broker: auto` the private Redis keeps its append-only file in the run's logs/ folder. When that
    disk fills, Redis refuses every write (MISCONF) before the images do: the run stops with one line (exit
    2, no traceback), nothing is ok without its image and record, and a resume with room finishes the rest."""
    config, calls = config_for(tmp_path, sample_image, "auto", n=40, params={"seconds": 0.1}, devices=("cpu",) * 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "logs").symlink_to(small_disk, target_is_directory=True)  # logs/ (and Redis's file) on the small disk
    fill(small_disk, leave=96 * 1024)
    proc = run_cli("run", str(config), timeout=180)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("[BALANCED] Editing")]
    assert "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    assert "Redis refuses writes" in errors[0] and f"editbatch resume {out}" in errors[0], errors
    records = {p.stem for p in (out / "records").glob("*.json")}
    manifest, summary = read_run(out)
    assert len(manifest) == 40
    assert all((out / r["output"]).is_file() and r["id"] in records for r in manifest if r["status"] == "ok")
    computed_before = Counter(c["id"] for c in read_jsonl(calls))

    (small_disk / "filler").unlink()
    resumed = run_cli("resume", str(out), timeout=180)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    manifest, summary = read_run(out)
    assert len(manifest) == 40 and all(r["status"] == "ok" and (out / r["output"]).is_file() for r in manifest)
    computed = Counter(c["id"] for c in read_jsonl(calls))
    assert all(computed[i] == computed_before[i] for i in records), "an item done before the resume ran again"
    print(f"done before Redis refused writes: {len(records)} of 40")
