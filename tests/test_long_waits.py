"""Waits as long as real GPU edits make them: every one crosses the library timeouts below.

Defaults that a wait of several seconds crosses, and where editbatch sets its own:
- redis-py 8.x: socket_timeout 5 s and socket_connect_timeout 5 s for every client (also for
  BLPOP, whose reply can take as long as its own timeout). editbatch's clients
  (redisconn.connect) use 20 s / 5 s and block in slices of redisconn.BLOCK_SLICE_S = 2 s.
- redis-py health_check_interval 0 (off); ours 10 s: a connection idle longer is pinged first.
- Kombu's Redis transport: brpop_timeout 1 s, health_check_interval 25 s, socket_timeout None,
  visibility_timeout 3600 s (ours: 6 h, celery_app.DEFAULT_VISIBILITY_TIMEOUT_S).
- Celery: worker event heartbeat 2 s; broker_heartbeat 120 s (AMQP only, unused on Redis).
- editbatch: presence TTL 10 s with a 3 s beat, load-slot lease 60 s renewed every 20 s,
  liveness check every 5 s, result inbox poll 1 s.

Each end-to-end run below has 8 s edits on a slow device and 2 s edits elsewhere, so barrier
waits last about 6 s and idle consumer connections sit for 8 s or more; one edit takes 27 s,
past Kombu's 25 s health check.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from editbatch import redisconn
from editbatch.barrier import BatchBarrier
from editbatch.producer.inbox import ResultInbox
from editbatch.workers.loading import LoadSlots

from .conftest import read_jsonl, read_run, run_cli, simple_rows, write_config, write_dataset

LONG = 7.0  # longer than redis-py's default 5 s socket timeout


def later(seconds: float, action) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), action()), daemon=True)
    thread.start()
    return thread


def test_blocking_pop_outlasts_the_socket_timeout(redis_url):
    client = redisconn.connect(redis_url)
    started = time.monotonic()
    assert redisconn.blpop(client, ["nothing"], LONG) is None
    assert time.monotonic() - started >= LONG
    later(LONG - 1, lambda: redisconn.connect(redis_url).rpush("later", "x"))
    assert redisconn.blpop(client, ["later"], LONG + 5) == (b"later", b"x")


def test_a_wait_with_a_millisecond_left_ends_on_time(redis_url):
    """Redis rounds a BLPOP timeout down to whole milliseconds and reads 0 as "forever": a wait whose last
    slice had under a millisecond left used to block until something was pushed (seen as a stopped worker
    that the producer did not notice while every other worker waited on it)."""
    client = redisconn.connect(redis_url)
    for left in (0.0004, 0.0009, 0.001, 0.0015, 0.005, 0.02):
        began = time.monotonic()
        assert redisconn.blpop(client, ["nothing"], left) is None
        assert time.monotonic() - began < 0.5, f"a wait of {left}s took {time.monotonic() - began:.1f}s"
    # The same through the producer's inbox: a poll of 1 s returns within about a second, every time.
    inbox = ResultInbox(client, "inbox")
    for _ in range(5):
        began = time.monotonic()
        assert inbox.get(timeout_s=0.3) == []
        assert time.monotonic() - began < 1.0


def test_result_inbox_waits_longer_than_the_socket_timeout(redis_url):
    inbox = ResultInbox(redisconn.connect(redis_url), "editbatch:run:t:results")
    later(LONG - 1, lambda: redisconn.connect(redis_url).rpush(inbox.key, json.dumps({"index": 3})))
    assert inbox.get(timeout_s=LONG + 5) == [{"index": 3}]


def test_barrier_wait_longer_than_the_socket_timeout(redis_url):
    client = redisconn.connect(redis_url)
    done = BatchBarrier("editbatch:run:t:barrier", 0, parties=2, waiters=1)
    done.arrive(client, 0)
    later(LONG - 1, lambda: done.arrive(redisconn.connect(redis_url), 1))
    started = time.monotonic()
    assert done.wait(client, timeout_s=LONG + 10)
    assert time.monotonic() - started >= LONG - 1.5
    # The set of arrivals decides, not the token: a second waiter (its token already taken) still passes.
    assert done.wait(client, timeout_s=1)
    assert not BatchBarrier("editbatch:run:t:barrier", 1, parties=1, waiters=0).wait(client, timeout_s=LONG)


def test_load_slot_held_longer_than_the_socket_timeout(redis_url):
    holder = LoadSlots(redisconn.connect(redis_url), "editbatch", 1, lease_s=3)  # renewed while held
    waiter = LoadSlots(redisconn.connect(redis_url), "editbatch", 1)
    got = {}

    def take():
        lease = waiter.acquire("second", timeout_s=60)
        got["at"] = time.monotonic()
        lease.release()

    with holder.hold("first"):
        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        time.sleep(LONG)
        released_at = time.monotonic()
    taker.join(30)
    # Only after the holder let go: its 3 s lease was renewed for the whole 7 s.
    assert got and got["at"] >= released_at


def long_run(tmp_path, sim_cluster, sample_image, *, mode: str, schedule: dict | None = None, rows=None):
    """6 items on the 3 shared workers; cpu1 is 4x slower: 8 s edits there, 2 s elsewhere."""
    calls = tmp_path / f"calls-{mode}.jsonl"
    dataset = write_dataset(tmp_path / "data", rows or simple_rows(6, sample_image))
    out = tmp_path / f"long-{mode}"
    config = write_config(tmp_path / f"long-{mode}.yaml", name=f"long-{mode}", dataset={"path": str(dataset)},
                          output_dir=str(out),
                          model={"type": "simulated", "path": "sim",
                                 "params": {"seconds": 2.0, "device_speed": [1, 4, 1], "call_log": str(calls)}},
                          cluster={"broker": sim_cluster["url"], "devices": ["cpu", "cpu", "cpu"],
                                   "ready_timeout_s": 60},
                          schedule={"mode": mode, "task_timeout_s": 120, **(schedule or {})})
    proc = run_cli("run", str(config), timeout=240)
    manifest, summary = read_run(out)
    return proc, manifest, summary, read_jsonl(calls)


@pytest.mark.slow
@pytest.mark.parametrize("mode,schedule", [("sync", {"barrier": "worker"}), ("sync", {"barrier": "producer"}),
                                           ("nosync", None), ("balanced", None), ("window", {"max_skew": 1})])
def test_every_mode_with_edits_of_several_seconds(tmp_path, sim_cluster, sample_image, mode, schedule):
    proc, manifest, summary, calls = long_run(tmp_path, sim_cluster, sample_image, mode=mode, schedule=schedule)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert [r["status"] for r in manifest] == ["ok"] * 6, [r["error"] for r in manifest]
    assert sorted(c["id"] for c in calls) == sorted(r["id"] for r in manifest)  # each computed once
    slow = [r for r in manifest if r["device"] == "cpu1"]
    assert slow and all(r["finished_at"] - r["started_at"] > 7 for r in slow)
    if mode == "sync":
        for k in (1,):
            previous_end = max(r["finished_at"] for r in manifest if r["batch"] == k - 1)
            assert min(r["started_at"] for r in manifest if r["batch"] == k) >= previous_end
        # The fast devices really waited at the barrier for longer than the socket timeout.
        assert max(summary["barrier_idle_by_device_s"].values()) > 5.5


@pytest.mark.slow
def test_an_edit_longer_than_kombus_health_check(tmp_path, sim_cluster, sample_image):
    rows = simple_rows(4, sample_image)
    rows[0]["params"] = {"seconds": 27.0, "device_speed": [1, 1, 1]}
    proc, manifest, _, calls = long_run(tmp_path, sim_cluster, sample_image, mode="nosync", rows=rows)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["status"] for r in manifest] == ["ok"] * 4
    assert manifest[0]["finished_at"] - manifest[0]["started_at"] > 26
    assert len(calls) == 4


@pytest.mark.slow
def test_staggered_loads_longer_than_the_socket_timeout(tmp_path, sample_image):
    """Two workers load for 6 s each through one slot: the second waits 6 s, the producer 12 s."""
    dataset = write_dataset(tmp_path / "data", simple_rows(2, sample_image))
    out = tmp_path / "out"
    config = write_config(tmp_path / "slow-load.yaml", name="slow-load", dataset={"path": str(dataset)},
                          output_dir=str(out), model={"type": "simulated", "params": {"load_seconds": 6.0}},
                          cluster={"broker": "auto", "devices": ["cpu", "cpu"], "load_concurrency": 1})
    proc = run_cli("run", str(config), timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    workers = json.loads((out / "workers.json").read_text())
    loads = sorted((w["load_started_at"], w["load_finished_at"]) for w in workers)
    assert loads[1][0] >= loads[0][1] and loads[1][1] - loads[0][0] > 11.5
    manifest, _ = read_run(out)
    assert [r["status"] for r in manifest] == ["ok", "ok"]
    assert min(r["started_at"] for r in manifest) >= loads[1][1]
