"""The job store's scripts on a real Redis: the queue's order, taking the head, the model rule, leases."""

from __future__ import annotations

import time

import pytest

from editbatch import keys
from editbatch.jobs.store import JobStore, QueueFull
from editbatch.redisconn import connect

A, B = "model-a", "model-b"


@pytest.fixture
def store(redis_url):
    redis = connect(redis_url)
    yield JobStore(redis, "store-test")
    redis.close()


def take(store: JobStore, job_id: str, model: str = A, *, owner: str = "c1", max_running: int = 2) -> str:
    return store.take(job_id, owner=owner, max_running=max_running, model_key=model, run_id=f"run-{job_id}")


def test_priority_then_submission_order_and_only_the_head_is_taken(store):
    for job_id, priority in (("a", 0), ("b", 0), ("c", 5)):
        store.create(job_id, {}, priority=priority, max_queued=10)
    assert store.queued() == ["c", "a", "b"]
    assert take(store, "a") == "not-head"
    assert take(store, "c") == "taken"
    record = store.get("c")
    assert record["state"] == "running" and record["attempts"] == 1 and record["run_id"] == "run-c"
    assert record["started_at"] and store.lease_holder("c") == "c1" and store.running() == ["c"]
    assert take(store, "a") == "taken"
    assert take(store, "b") == "full"
    assert store.queued() == ["b"] and store.get("b")["position"] == 1


def test_a_job_of_another_model_waits_until_the_running_jobs_end(store):
    for job_id in ("a1", "b1", "a2"):
        store.create(job_id, {}, max_queued=10)
    assert take(store, "a1", A) == "taken"
    assert take(store, "b1", B) == "other-model"  # a slot is free, but the workers serve model A
    assert store.queued() == ["b1", "a2"]  # it keeps its place: a2 does not overtake it
    store.finish("a1", "done")
    assert store.running() == []
    assert take(store, "b1", B) == "taken"
    assert take(store, "a2", A) == "other-model"


def test_the_wake_list_holds_at_most_one_element_and_wakes_a_waiter(store):
    wake = keys.jobs_wake(store.ns)
    for job_id in ("a", "b", "c"):
        store.create(job_id, {}, max_queued=10)
    assert store.redis.llen(wake) == 1
    assert store.wait_for_change(1.0) is True
    started = time.monotonic()
    assert store.wait_for_change(0.3) is False and time.monotonic() - started >= 0.3
    store.request_cancel("b")
    assert store.wait_for_change(1.0) is True
    take(store, "a")
    store.redis.delete(wake)
    store.finish("a", "done")
    assert store.wait_for_change(1.0) is True


def test_a_running_job_is_claimed_only_once_its_lease_is_gone(store):
    store.create("j", {}, max_queued=10)
    assert take(store, "j", owner="dead") == "taken"
    assert store.claim("j", owner="c2", run_id="run-2") is False  # the lease is still held
    assert store.keep_lease("j", "c2") is False
    store.redis.delete(keys.job_lease(store.ns, "j"))  # its coordinator died: the lease ran out
    assert store.claim("j", owner="c2", run_id="run-2") is True
    record = store.get("j")
    assert record["run_id"] == "run-2" and record["owner"] == "c2" and record["attempts"] == 2
    assert store.claim("j", owner="c3", run_id="run-3") is False
    assert store.claim("j", owner="c2", run_id="run-2b") is True  # its own, after a lost reply
    assert store.keep_lease("j", "c2") is True and store.keep_lease("j", "dead") is False
    store.release("j", "dead")
    assert store.lease_holder("j") == "c2"
    store.release("j", "c2")
    assert store.lease_holder("j") is None
    store.finish("j", "done")
    assert store.claim("j", owner="c2", run_id="run-4") is False and store.running() == []


def test_cancel_ends_a_queued_job_and_admission_counts_only_the_queue(store):
    store.create("a", {}, max_queued=2)
    store.create("b", {}, max_queued=2)
    assert store.create("a", {}, max_queued=2) is False  # the same id again: nothing new
    with pytest.raises(QueueFull, match="queue is full"):
        store.create("c", {}, max_queued=2)
    assert take(store, "a") == "taken"
    assert store.create("c", {}, max_queued=2) is True  # a running job leaves room in the queue
    assert store.request_cancel("b") == "queued"
    record = store.get("b")
    assert record["state"] == "cancelled" and record["error"] == "cancelled before it started"
    assert store.queued() == ["c"]
    assert store.request_cancel("a") == "running" and store.cancel_requested("a")
    assert store.get("a")["state"] == "running"
    assert store.request_cancel("nope") is None


def test_progress_passes_on_whatever_counts_the_producer_reports(store):
    from types import SimpleNamespace

    from editbatch.jobs.runner import Progress

    seen = []
    store.create("p", {}, max_queued=10)
    coordinator = SimpleNamespace(redis=store.redis, ns=store.ns,
                                  view=SimpleNamespace(progress=lambda record, counts: seen.append(counts)))
    progress = Progress(coordinator, store.get("p"))
    counts = {"total": 5, "ok": 2, "failed": 0, "invalid": 0, "pending": 0, "not_run": 3}
    progress.update(counts)
    assert store.get("p")["counts"] == counts and seen == [counts]
    progress.update({**counts, "ok": 3})  # within the second: kept, written at the next flush
    assert store.get("p")["counts"]["ok"] == 2 and progress.counts["ok"] == 3
    progress.flush()
    assert store.get("p")["counts"]["ok"] == 3 and len(seen) == 2


def test_the_end_of_an_attempt_whose_job_was_taken_over_is_not_written(store):
    store.create("f", {}, max_queued=10)
    assert take(store, "f", owner="paused") == "taken"  # run id run-f
    store.redis.delete(keys.job_lease(store.ns, "f"))
    assert store.claim("f", owner="c2", run_id="run-f2")
    assert store.finish("f", "failed", run_id="run-f", error="late") is False  # the paused one wakes up
    assert store.get("f")["state"] == "running" and store.running() == ["f"]
    assert store.finish("f", "done", run_id="run-f2") is True
    assert store.get("f")["state"] == "done" and store.get("f")["error"] is None and store.running() == []


def test_only_an_ended_job_is_queued_again_and_prune_takes_only_old_ended_ones(store):
    for job_id in ("ended", "running", "queued"):
        store.create(job_id, {"name": job_id}, max_queued=10)
    assert take(store, "ended") == "taken" and take(store, "running") == "taken"
    store.finish("ended", "cancelled", error="job cancelled", run_id="run-ended")
    assert store.resume("running") == "running" and store.resume("queued") == "queued"
    assert store.resume("nobody") is None
    assert store.resume("ended", {"name": "new"}) == "cancelled"
    record = store.get("ended")
    assert record["state"] == "queued" and record["config"] == {"name": "new"} and record["error"] is None
    assert not store.cancel_requested("ended") and store.queued() == ["queued", "ended"]
    # Taken again, it runs as a resume (attempts > 1) on the same record.
    store.request_cancel("queued")
    assert take(store, "ended") == "taken" and store.get("ended")["attempts"] == 2
    store.finish("ended", "done", run_id="run-ended")
    assert store.prune(3600) == []  # ended just now
    assert sorted(store.prune(0)) == ["ended", "queued"]  # both ended; the running one stays
    assert [r["id"] for r in store.list()] == ["running"]
