"""The judge stage against a fake OpenAI-compatible server: every fault, the shared rate limit, kill and resume.

Real judge worker processes (`editbatch judge-worker`), real Redis, the fake server on 127.0.0.1.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from .conftest import REPO, read_jsonl, run_cli, write_config, write_dataset
from editbatch.redisconn import connect
from editbatch.scores.judge.ratelimit import SharedRateLimit
from editbatch.scores.judge.setup import make_stage
from editbatch.scores.judge.workers import serving
from editbatch.workers.judging import load_judge_config
from .fake_judge import FakeJudge

TEMPLATE = "Grade the edit id={id} (type {task_type}): {instruction}. Answer JSON only.\n"


def make_outputs(tmp_path: Path, ids: list[str], *, extra: dict | None = None) -> tuple[Path, Path]:
    """A folder of outputs named by id (made by 'another tool') and its dataset."""
    folder = tmp_path / "outputs"
    folder.mkdir()
    source = tmp_path / "in.png"
    Image.new("RGB", (24, 24), (10, 120, 200)).save(source)
    rows = []
    for n, item in enumerate(ids):
        Image.new("RGB", (24, 24), (n * 9 % 256, 40, 90)).save(folder / f"{item}.png")
        rows.append({"id": item, "image": str(source), "instruction": f"make {item} brighter",
                     "task_type": "color" if n % 2 else "style", **(extra or {})})
    return folder, write_dataset(tmp_path / "data", rows)


def judge_config(tmp_path: Path, url: str, **judge) -> Path:
    """`editbatch score --config` reads its evaluate section; judge workers started by hand read all of it."""
    template = tmp_path / "template.txt"
    template.write_text(TEMPLATE)
    return write_config(tmp_path / "eval.yaml", cluster={"input_roots": [str(tmp_path)],
                                                          "output_roots": [str(tmp_path)]}, evaluate={
        "preset": "gedit", "bootstrap": 200,
        "judge": {"url": url, "model": "fake-vlm-2026-01-01", "template": str(template), "workers": 4,
                  "requests_per_minute": 6000, "timeout_s": 1.0, "retries": 3, "backoff_s": 0.1,
                  "max_backoff_s": 0.5, **judge}})


def start_judge_workers(config: Path, url: str, n: int, logs: Path) -> list[subprocess.Popen]:
    """`n` judge worker processes started by hand, as an operator would; returns once all serve."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for k in range(n):
        with (logs / f"judge-{k}.log").open("wb") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "editbatch", "judge-worker", "--config", str(config),
                                           "--broker", url], cwd=REPO, stdout=out, stderr=subprocess.STDOUT))
    queue = make_stage(load_judge_config(config).evaluate, str(config)).queue
    redis = connect(url)
    deadline = time.monotonic() + 90
    while serving(redis, "editbatch", queue) < n:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [(logs / f"judge-{k}.log").read_text()[-2000:] for k in range(n)]
        time.sleep(0.2)
    redis.close()
    return procs


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cached_ids(folder: Path) -> set[str]:
    return {json.loads(p.read_text())["id"] for p in folder.rglob("*.json")}


def test_each_fault_is_recorded_as_what_it_was_and_nothing_answered_is_asked_again(tmp_path):
    """`editbatch score` without a broker: its own Redis and judge worker process."""
    plan = {"r429": ["429", "ok"], "e500": ["500", "ok"], "down": ["500"], "filt": ["filter"],
            "bad": ["badjson"], "hang": ["hang"]}
    ids = ["ok1", "ok2", "ok3", *plan]
    folder, dataset = make_outputs(tmp_path, ids)
    with FakeJudge(plan, hang_s=3.0) as server:
        config = judge_config(tmp_path, server.url, retries=1)
        proc = run_cli("score", str(folder), "--dataset", str(dataset), "--config", str(config))
        assert proc.returncode == 1, proc.stderr  # some items could not be judged: listed, exit 1
        rows = {r["id"]: r for r in read_jsonl(folder / "scores.jsonl")}
        status = {i: rows[i]["scores"]["judge"]["status"] for i in ids}
        assert status == {"ok1": "ok", "ok2": "ok", "ok3": "ok", "r429": "ok", "e500": "ok", "down": "error",
                          "filt": "refused", "bad": "unparsed", "hang": "timeout"}
        assert server.requests["r429"][1] - server.requests["r429"][0] >= 1.0  # Retry-After: 1 honoured
        assert "content_filter" in rows["filt"]["scores"]["judge"]["raw"]
        assert rows["bad"]["scores"]["judge"]["raw"] == "I think it is about 7/10 overall."
        assert rows["bad"]["scores"]["judge"]["scores"] is None and "values" not in rows["bad"] or \
            "O" not in rows["bad"]["values"]
        assert rows["ok1"]["values"] == {"SC": 6.0, "PQ": 4.0, "O": pytest.approx(24 ** 0.5)}
        body = server.bodies[0]
        assert body["temperature"] == 0 and body["seed"] == 42 and body["model"] == "fake-vlm-2026-01-01"
        assert body["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
        summary = json.loads((folder / "scores.json").read_text())
        assert summary["failed"] == {"refused": 1, "unparsed": 1, "timeout": 1, "error": 1}
        overall = summary["scores"]["O"]
        assert overall["micro"]["n"] == 5 and overall["micro"]["failed"] == 4
        assert overall["micro"]["mean"] == pytest.approx(24 ** 0.5)
        assert set(overall["by_category"]) == {"color", "style"}
        assert summary["judge"]["template_sha256"] and summary["judge"]["model"] == "fake-vlm-2026-01-01"
        assert "bad (unparsed)" in proc.stdout and "hang (timeout)" in proc.stdout

        before = {i: server.count(i) for i in ids}
        again = run_cli("score", str(folder), "--dataset", str(dataset), "--config", str(config))
        assert again.returncode == 1
        asked = {i: server.count(i) - before[i] for i in ids}
        # Answers, refusals and unparsable answers are cached; only the timeout and the server error are asked again.
        assert asked == {i: (2 if i in ("hang", "down") else 0) for i in ids}

        # A new prompt template is a new question: everything is asked again.
        (tmp_path / "template.txt").write_text(TEMPLATE + "Be strict.\n")
        run_cli("score", str(folder), "--dataset", str(dataset), "--config", str(config))
        assert all(server.count(i) > before[i] + asked[i] for i in ids)


def test_four_judge_workers_share_one_rate_limit(tmp_path, redis_url):
    """Four judge worker processes, two threads each: requests per window, measured at the server, stay within
    burst + window x rate; the stage takes the time the limit says (more than five seconds here)."""
    ids = [f"i{n:02d}" for n in range(24)]
    folder, dataset = make_outputs(tmp_path, ids)
    rate_per_s, burst = 4.0, 2
    with FakeJudge() as server:
        config = judge_config(tmp_path, server.url, workers=2, requests_per_minute=rate_per_s * 60, burst=burst,
                              timeout_s=5)
        workers = start_judge_workers(config, redis_url, 4, tmp_path / "logs")
        try:
            started = time.monotonic()
            proc = run_cli("score", str(folder), "--dataset", str(dataset), "--config", str(config),
                           "--broker", redis_url)
            took = time.monotonic() - started
        finally:
            stop_all(workers)
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(folder / "scores.jsonl")
    assert [r["scores"]["judge"]["status"] for r in rows] == ["ok"] * len(ids)
    assert all(server.count(i) == 1 for i in ids)
    times = sorted(t for ts in server.requests.values() for t in ts)
    for start in times:
        for window in (1.0, 2.0, 4.0):
            inside = sum(1 for t in times if start <= t < start + window)
            assert inside <= burst + window * rate_per_s + 1, (window, inside)
    assert times[-1] - times[0] >= (len(ids) - burst) / rate_per_s - 0.5  # the limit, not the workers, set the pace
    # Every worker asked: the limit was shared, not held by one.
    logs = [(tmp_path / "logs" / f"judge-{k}.log").read_text() for k in range(4)]
    assert all(" ok" in log for log in logs), logs
    print(f"judge: {len(ids)} items in {took:.1f}s, 4 workers x 2 threads, limit {rate_per_s * 60:g}/min")


def test_a_judge_worker_killed_mid_stage_its_items_are_sent_again_and_nothing_answered_is_asked_twice(
        tmp_path, redis_url):
    ids = [f"w{n:02d}" for n in range(16)]
    folder, dataset = make_outputs(tmp_path, ids)
    with FakeJudge(delay_s=0.5) as server:
        config = judge_config(tmp_path, server.url, workers=2, timeout_s=5)
        workers = start_judge_workers(config, redis_url, 2, tmp_path / "logs")
        try:
            proc = subprocess.Popen([sys.executable, "-m", "editbatch", "score", str(folder), "--dataset",
                                     str(dataset), "--config", str(config), "--broker", redis_url],
                                    cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            log = tmp_path / "logs" / "judge-0.log"

            def busy() -> bool:  # worker 0 has an item under way (received, not yet reported): killing it matters
                text = log.read_text(errors="replace")
                return text.count("] received") > text.count(": judge-")

            deadline = time.monotonic() + 60
            while not (sum(server.count(i) for i in ids) >= 5 and busy()) and time.monotonic() < deadline:
                time.sleep(0.02)
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait()
            answered = cached_ids(folder / ".scores-cache")
            out, err = proc.communicate(timeout=120)
        finally:
            stop_all(workers)
    assert proc.returncode == 0, err
    rows = {r["id"]: r for r in read_jsonl(folder / "scores.jsonl")}
    assert {rows[i]["scores"]["judge"]["status"] for i in ids} == {"ok"}
    assert {i: server.count(i) for i in answered} == {i: 1 for i in answered}  # answered: never asked again
    twice = {i for i in ids if server.count(i) == 2}
    assert all(server.count(i) <= 2 for i in ids) and len(twice) <= 2  # at most the killed worker's two threads
    assert "sent again" in out and "worker is gone" in out  # noticed by its lapsed heartbeat, not a 6 h timeout


def test_a_killed_score_command_resumes_without_asking_twice(tmp_path):
    ids = [f"k{n:02d}" for n in range(16)]
    folder, dataset = make_outputs(tmp_path, ids)
    with FakeJudge(delay_s=0.3) as server:
        config = judge_config(tmp_path, server.url, workers=2, timeout_s=5)
        cmd = [sys.executable, "-m", "editbatch", "score", str(folder), "--dataset", str(dataset), "--config",
               str(config)]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while sum(server.count(i) for i in ids) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        answered = cached_ids(folder / ".scores-cache")
        assert answered and not (folder / "scores.json").exists()
        time.sleep(1.0)  # its judge worker ends with it (a parent-death signal); what it had in flight ends too
        in_flight = {i for i in ids if server.count(i)} - cached_ids(folder / ".scores-cache")
        answered = cached_ids(folder / ".scores-cache")
        resumed = run_cli("score", str(folder), "--dataset", str(dataset), "--config", str(config))
        assert resumed.returncode == 0, resumed.stderr
        assert {i: server.count(i) for i in answered} == {i: 1 for i in answered}  # never asked again
        assert all(server.count(i) <= 2 for i in in_flight) and len(in_flight) <= 2  # cut off mid-question
        assert all(server.count(i) == 1 for i in set(ids) - answered - in_flight)


def test_the_judge_stage_outlasts_a_server_down_for_30_seconds(tmp_path):
    ids = ["d1", "d2", "d3"]
    folder, dataset = make_outputs(tmp_path, ids)
    with FakeJudge() as probe:
        port = probe.port  # a free port, closed again: connections are refused until the server comes up
    config = judge_config(tmp_path, f"http://127.0.0.1:{port}/v1", retries=20, backoff_s=0.5, max_backoff_s=4)
    cmd = [sys.executable, "-m", "editbatch", "score", str(folder), "--dataset", str(dataset), "--config",
           str(config)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(30)
    with FakeJudge(port=port) as server:
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    rows = read_jsonl(folder / "scores.jsonl")
    assert [r["scores"]["judge"]["status"] for r in rows] == ["ok"] * 3
    assert all(r["scores"]["judge"]["attempts"] > 1 for r in rows)
    assert all(server.count(i) == 1 for i in ids)


def test_a_run_feeds_the_judge_as_edits_commit_and_a_killed_producer_resumes_without_asking_twice(
        tmp_path, sim_cluster):
    from .conftest import SIM_DEVICES

    ids = [f"r{n:02d}" for n in range(12)]
    _, dataset = make_outputs(tmp_path, ids)
    out = tmp_path / "run"
    with FakeJudge(delay_s=0.4) as server:
        template = tmp_path / "template.txt"
        template.write_text(TEMPLATE)
        config = write_config(tmp_path / "run.yaml", name="judged", dataset={"path": str(dataset)},
                              output_dir=str(out), model={"type": "simulated", "path": "sim",
                                                          "params": {"seconds": 0.3}},
                              cluster={"broker": sim_cluster["url"], "devices": SIM_DEVICES, "ready_timeout_s": 60},
                              schedule={"mode": "nosync", "task_timeout_s": 60},
                              evaluate={"preset": "gedit", "bootstrap": 200, "judge": {
                                  "url": server.url, "model": "fake-vlm-2026-01-01", "template": str(template),
                                  "workers": 2, "requests_per_minute": 6000, "timeout_s": 5}})
        # The run's broker is an external one: its judge workers are started by hand, from the run's config.
        judges = start_judge_workers(config, sim_cluster["url"], 1, tmp_path / "logs")
        proc = subprocess.Popen([sys.executable, "-m", "editbatch", "run", str(config)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 90
        while sum(server.count(i) for i in ids) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        answered = cached_ids(out / ".scores-cache")
        in_flight = {i for i in ids if server.count(i)} - answered
        assert answered and len(in_flight) <= 2
        try:
            resumed = run_cli("run", str(config), "--resume")
        finally:
            stop_all(judges)
        assert resumed.returncode == 0, resumed.stderr
        assert {i: server.count(i) for i in answered} == {i: 1 for i in answered}  # the cache answered them
        assert all(server.count(i) == 1 for i in set(ids) - answered - in_flight)
        rows = {r["id"]: r for r in read_jsonl(out / "scores.jsonl")}
        assert {rows[i]["scores"]["judge"]["status"] for i in ids} == {"ok"}
        summary = json.loads((out / "scores.json").read_text())
        assert summary["scores"]["O"]["micro"]["n"] == 12 and summary["judge"]["model"] == "fake-vlm-2026-01-01"
        # Fed as edits commit: the judge was asked before the last edit of the first run had finished.
        first_run = [r for r in read_jsonl(out / "manifest.jsonl") if r.get("reused")]
        assert first_run and min(min(t) for t in server.requests.values()) < max(r["finished_at"] for r in first_run)


def test_the_shared_bucket_also_limits_tokens_per_minute(redis_url):
    redis = connect(redis_url)
    a = SharedRateLimit(redis, "test", "tokens", requests_per_minute=6000, tokens_per_minute=600)
    b = SharedRateLimit(redis, "test", "tokens", requests_per_minute=6000, tokens_per_minute=600)  # another worker
    assert a.try_acquire(300) == 0 and b.try_acquire(300) == 0
    wait = a.try_acquire(300)
    assert 25 < wait <= 30  # 300 tokens at 600/min: half a minute, less what refilled meanwhile
    redis.close()


def test_two_copies_of_one_item_on_two_judge_workers_ask_once(tmp_path, redis_url):
    """A copy sent again while the first is still asking (a producer that thought its worker late, a killed
    run and its resume): the second waits for the first's answer and takes it from the cache."""
    from editbatch.celery_app import make_app
    from editbatch.tasks.judge_contract import TASK_NAME, JudgeTask

    folder, _ = make_outputs(tmp_path, ["twin"])
    with FakeJudge(delay_s=1.5) as server:
        config = judge_config(tmp_path, server.url, workers=1, timeout_s=5)
        workers = start_judge_workers(config, redis_url, 2, tmp_path / "logs")
        try:
            queue = make_stage(load_judge_config(config).evaluate, str(config)).queue
            inbox = "editbatch:run:twins:judge-results"
            task = JudgeTask("twin", "make twin brighter", str(folder / "twin.png"), queue, str(tmp_path / "cache"),
                             [str(tmp_path / "in.png")], fields={"id": "twin", "task_type": "style"}, report=inbox)
            app = make_app(redis_url, task_events=False)
            for _ in range(2):
                app.send_task(TASK_NAME, args=[task.to_payload()], queue=queue)
            # Whoever sends a task, a judge worker reads only under its roots (here tmp_path).
            outside = JudgeTask("stray", "x", "/etc/hostname", queue, str(tmp_path / "cache"), report=inbox)
            app.send_task(TASK_NAME, args=[outside.to_payload()], queue=queue)
            redis = connect(redis_url)
            records = []
            deadline = time.monotonic() + 60
            while len(records) < 3 and time.monotonic() < deadline:
                got = redis.blpop([inbox], timeout=1)
                if got and "status" in json.loads(got[1]):
                    records.append(json.loads(got[1]))
            redis.close()
        finally:
            stop_all(workers)
    stray = next(r for r in records if r["id"] == "stray")
    assert stray["status"] == "error" and "outside the worker's image roots" in stray["error"]
    twins = [r for r in records if r["id"] == "twin"]
    assert [r["status"] for r in twins] == ["ok", "ok"]
    assert len({r["worker"] for r in twins}) == 2  # one copy on each worker
    assert sorted(bool(r.get("cached")) for r in twins) == [False, True]
    assert server.count("twin") == 1 and server.count("stray") == 0


def test_a_judge_worker_config_without_a_judge_is_refused_naming_file_and_field(tmp_path):
    config = write_config(tmp_path / "judge.yaml", cluster={"input_roots": [str(tmp_path)],
                                                           "output_roots": [str(tmp_path)]},
                          evaluate={"metrics": ["l1_input"]})
    proc = run_cli("judge-worker", "--config", str(config), "--broker", "redis://127.0.0.1:1/0")
    assert proc.returncode == 2 and f"{config}: evaluate: a judge worker needs" in proc.stderr, proc.stderr
    no_roots = write_config(tmp_path / "bare.yaml", evaluate={"preset": "gedit", "judge": {
        "url": "http://127.0.0.1:1/v1", "model": "fake-vlm-2026-01-01"}})
    proc = run_cli("judge-worker", "--config", str(no_roots), "--broker", "redis://127.0.0.1:1/0")
    assert proc.returncode == 2 and f"{no_roots}: dataset: required but missing" in proc.stderr, proc.stderr


def test_a_one_command_run_starts_its_judge_worker_and_outlives_its_sigkill(tmp_path):
    """`editbatch run` with a private cluster: a judge worker beside the device worker. Killed with SIGKILL
    mid-stage, it is started again; its items are sent again once its heartbeat lapses, and nothing the
    judge had answered is asked again."""
    ids = [f"a{n:02d}" for n in range(12)]
    _, dataset = make_outputs(tmp_path, ids)
    out = tmp_path / "run"
    with FakeJudge(delay_s=0.5) as server:
        template = tmp_path / "template.txt"
        template.write_text(TEMPLATE)
        config = write_config(tmp_path / "run.yaml", name="judged-auto", dataset={"path": str(dataset)},
                              output_dir=str(out), model={"type": "simulated", "path": "sim",
                                                          "params": {"seconds": 0.1}},
                              cluster={"broker": "auto", "devices": ["cpu"], "ready_timeout_s": 60},
                              schedule={"mode": "nosync", "task_timeout_s": 60},
                              evaluate={"preset": "gedit", "bootstrap": 200, "judge": {
                                  "url": server.url, "model": "fake-vlm-2026-01-01", "template": str(template),
                                  "workers": 2, "requests_per_minute": 6000, "timeout_s": 5}})
        proc = subprocess.Popen([sys.executable, "-m", "editbatch", "run", str(config)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 90
        while sum(server.count(i) for i in ids) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        judge_pid = json.loads((out / "logs" / "cluster.json").read_text())["workers"]["judge"]
        subprocess.run(["kill", "-KILL", str(judge_pid)], check=True)
        answered = cached_ids(out / ".scores-cache")
        stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stdout + stderr
    assert "worker judge exited" in stdout and "sent again" in stdout
    rows = {r["id"]: r for r in read_jsonl(out / "scores.jsonl")}
    assert {rows[i]["scores"]["judge"]["status"] for i in ids} == {"ok"}
    assert {i: server.count(i) for i in answered} == {i: 1 for i in answered}
    assert all(server.count(i) <= 2 for i in ids) and sum(server.count(i) == 2 for i in ids) <= 2
    assert json.loads((out / "logs" / "cluster.json").read_text())["workers"]["judge"] != judge_pid
