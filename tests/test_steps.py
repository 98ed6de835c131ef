"""The steps of the edit task, one at a time: claim, commit, place, sync point, write errors.

A real Redis (the `redis_url` fixture) and a real worker runtime started in
this process with the simulated model; no mocks. Other claimants are played
by `Claim`s made by hand: one that names a worker with no presence record is
a holder that is gone (stopped, cut off) and may come back later.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from redis import Redis

from editbatch import keys, ledger, redisconn
from editbatch.barrier import BatchBarrier
from editbatch.report.thumbnails import thumbnail_path
from editbatch.tasks import claim, commit, steps
from editbatch.tasks.contract import EditTask
from editbatch.tasks.handback import HandBack
from editbatch.workers import runtime

from .conftest import fill, write_config

RED, BLUE = (200, 0, 0), (0, 0, 200)


@pytest.fixture
def rt(redis_url, tmp_path_factory, tmp_path):
    base = str(tmp_path_factory.getbasetemp())
    config = write_config(tmp_path / "worker.yaml", name="steps", dataset={"path": str(tmp_path / "unused.jsonl")},
                          output_dir=str(tmp_path / "unused"),
                          model={"type": "simulated", "path": "sim", "params": {"seconds": 0.0}},
                          cluster={"broker": redis_url, "devices": ["cpu"], "output_roots": [base],
                                   "input_roots": [base]})
    worker = runtime.start(redis_url, "cpu0", config)
    runtime.announce_ready()
    try:
        yield worker
    finally:
        runtime.stop()
        runtime._current = None


def make_task(out: Path, item: str = "item-000", **fields) -> EditTask:
    return EditTask(id=item, images=[], instruction="edit", output_dir=str(out), seed=7, **fields)


def ghost(rt, task: EditTask) -> claim.Claim:
    """A claimant whose worker has no presence record: judged gone, yet it may still write later."""
    return claim.Claim(rt.redis, claim.ItemKeys.of(rt.cluster.namespace, task),
                       claim.Holder("cpu9", 999_999, task.run, task.index, "ghost"))


def edited(colour) -> steps.Edited:
    return steps.Edited(Image.new("RGB", (8, 8), colour), {"work_s": 0.1}, [])


def on_disk(out: Path, item: str = "item-000") -> tuple[dict, tuple]:
    record = ledger.read_record(ledger.record_path(out, item))
    with Image.open(out / ledger.image_relpath(item)) as im:
        return record, im.convert("RGB").getpixel((0, 0))


def attempts_left(out: Path) -> list[str]:
    folder = out / ".attempts"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_process_commits_the_attempt_then_reuses_it(rt, tmp_path):
    task = make_task(tmp_path / "out")
    first = steps.process(task, rt)
    assert first["status"] == "ok" and first["attempt"] > 0 and not first.get("reused"), first
    record, _ = on_disk(tmp_path / "out")
    assert record["attempt"] == first["attempt"] and record["status"] == "ok" and record["device"] == "cpu0"
    assert attempts_left(tmp_path / "out") == []
    again = steps.process(task, rt)
    assert again["reused"] and again["attempt"] == first["attempt"] and again["started_at"] == first["started_at"]


def test_each_claim_gets_a_new_token_and_a_gone_holder_is_freed(rt, tmp_path):
    task = make_task(tmp_path / "out")
    late = ghost(rt, task)
    first = late.try_take().token  # the first token of an item comes from Redis's clock (milliseconds)
    assert abs(first - rt.redis.time()[0] * 1000) < 5000
    mine = claim.Claim(rt.redis, late.item, claim.Holder("cpu0", rt.pid, None, 0, "mine"))
    busy = mine.try_take()
    assert isinstance(busy, claim.Busy)
    assert "cpu9: worker is gone" in mine.free_if_gone(rt.cluster.namespace, busy.holder)
    assert mine.try_take() == claim.Taken(first + 1)
    assert mine.try_take() == claim.Taken(first + 1)  # a retried call whose reply was lost: the same token
    # A live holder is waited for, not freed.
    other = claim.Claim(rt.redis, late.item, claim.Holder("cpu0", rt.pid, None, 0, "other"))
    assert other.free_if_gone(rt.cluster.namespace, other.try_take().holder) is None
    mine.release()
    late.release()  # its lease is no longer its own: nothing happens


def test_a_late_holder_never_overwrites_the_committed_attempt(rt, tmp_path):
    out = tmp_path / "out"
    task = make_task(out)
    late = ghost(rt, task)
    late.try_take()  # token 1, then its worker pauses past its presence TTL
    held = claim.take(task, rt)  # frees the gone holder's claim: a newer token
    assert held.token == late.token + 1
    result = steps.new_result(task, rt)
    steps.place(task, rt, held, edited(BLUE), result)
    held.release()
    assert result["status"] == "ok" and result["attempt"] == held.token
    # The late holder wakes up, finishes its edit and tries to commit it.
    stale = steps.new_result(task, rt)
    stale.update(started_at=1.0, finished_at=2.0)
    steps.place(task, rt, late, edited(RED), stale)
    assert stale["superseded"] and stale["reused"] and stale["attempt"] == held.token
    assert stale["started_at"] == result["started_at"]  # the committed attempt's times, not its own
    record, pixel = on_disk(out)
    assert record["attempt"] == held.token and pixel == BLUE
    assert attempts_left(out) == []


def test_a_late_holder_waits_for_the_commit_of_the_copy_that_replaced_it(rt, tmp_path):
    out = tmp_path / "out"
    task = make_task(out)
    late = ghost(rt, task)
    late.try_take()
    held = claim.take(task, rt)
    stale = steps.new_result(task, rt)
    loser = threading.Thread(target=steps.place, args=(task, rt, late, edited(RED), stale))
    loser.start()  # its token is stale and nothing is committed yet: it waits
    time.sleep(1.0)
    assert loser.is_alive()
    result = steps.new_result(task, rt)
    steps.place(task, rt, held, edited(BLUE), result)
    held.release()
    loser.join(10)
    assert stale["superseded"] and stale["attempt"] == held.token and on_disk(out)[1] == BLUE


def test_a_commit_whose_mover_died_is_finished_by_the_next_copy(rt, tmp_path):
    out = tmp_path / "out"
    task = make_task(out)
    dead = ghost(rt, task)
    token = dead.try_take().token
    attempt = commit.Attempt(out, task.id, token)
    attempt.write(Image.new("RGB", (8, 8), RED), {"id": task.id, "status": "ok", "seed": task.seed,
                                                  "output": ledger.image_relpath(task.id), "device": "cpu9"})
    assert commit.commit(rt.redis, dead.item.fence, token - 1) == 0  # a stale token
    assert commit.commit(rt.redis, dead.item.fence, token) == token
    assert commit.commit(rt.redis, dead.item.fence, token) == token  # a retried call
    assert not ledger.record_path(out, task.id).exists()  # its worker died before moving the files
    result = steps.process(task, rt)
    assert result["reused"] and result["attempt"] == token and result["device"] == "cpu9"
    assert on_disk(out)[1] == RED and attempts_left(out) == []


def test_a_commit_whose_files_are_gone_is_forgotten(rt, tmp_path):
    out = tmp_path / "out"
    task = make_task(out)
    item = claim.ItemKeys.of(rt.cluster.namespace, task)
    rt.redis.hset(item.fence, mapping={"epoch": 1, "committed": 1})  # the folder was emptied by hand
    result = steps.process(task, rt)
    assert result["status"] == "ok" and not result.get("reused") and result["attempt"] == 2


def test_claims_of_an_overwritten_folder_do_not_apply(rt, tmp_path):
    out = tmp_path / "out"
    first = make_task(out, folder="incarnation-1")
    assert steps.process(first, rt)["status"] == "ok"
    for path in (out / "records").iterdir():
        path.unlink()  # --overwrite empties the folder and gives it a new incarnation
    later = steps.process(make_task(out, folder="incarnation-2"), rt)
    assert later["status"] == "ok" and not later.get("reused")
    assert keys.item_fence("ns", "/o", "a", "x") != keys.item_fence("ns", "/o", "a", "y")
    assert keys.item_claim("ns", "/o", "a") == keys.item_claim("ns", "/o", "a", None)


def test_an_item_arrives_once_however_often_it_runs(rt, tmp_path):
    barrier = BatchBarrier(keys.barrier_prefix(rt.cluster.namespace, "r1") + ":0", 0, parties=2, waiters=1)
    task = make_task(tmp_path / "out", arrive_at=barrier.to_dict(), run="r1")
    steps.process(task, rt)
    steps.process(task, rt)  # a redelivered copy: reused, and arrives again
    assert not barrier.is_open(rt.redis) and rt.redis.scard(barrier.arrived_key) == 1
    outside = make_task(tmp_path / "out", arrive_at={**barrier.to_dict(), "prefix": "other:run:x"})
    with pytest.raises(ValueError, match="outside namespace"):
        steps.process(outside, rt)


def test_the_previous_batch_is_waited_for(rt, redis_url, tmp_path):
    before = BatchBarrier(keys.barrier_prefix(rt.cluster.namespace, "r2") + ":0", 0, parties=1, waiters=1)
    task = make_task(tmp_path / "out", wait_for=before.to_dict(), wait_timeout_s=0.5, run="r2")
    result = steps.process(task, rt)
    assert result["status"] == "failed" and "did not finish within 0.5s" in result["error"]
    threading.Timer(0.5, lambda: before.arrive(redisconn.connect(redis_url), 0)).start()
    task.wait_timeout_s = 5
    assert steps.process(task, rt)["status"] == "ok"


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_write_error_fails_only_that_item_and_leaves_no_final_files(rt, small_disk, fault):
    out = small_disk / "out"
    for name in ("images", "records", ".attempts"):
        (out / name).mkdir(parents=True)
    if fault == "full":
        filler = fill(small_disk)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    task = make_task(out)
    result = steps.process(task, rt)
    assert result["status"] == "failed" and "traceback" not in result
    why = "No space left on device (ENOSPC)" if fault == "full" else "Read-only file system (EROFS)"
    assert re.match(rf"could not write {out}/\.attempts/item-000\.\d+\.png: ", result["error"]), result["error"]
    assert why in result["error"]
    assert "\n" not in result["error"]
    assert list((out / "images").iterdir()) == [] and list((out / "records").iterdir()) == []
    assert attempts_left(out) == []
    # Space again: the next copy of the item goes through (with a new token).
    if fault == "full":
        os.unlink(filler)
    else:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    again = steps.process(task, rt)
    assert again["status"] == "ok" and on_disk(out)[0]["attempt"] == again["attempt"]


def test_an_item_whose_fence_state_was_lost_still_commits_once(rt, tmp_path):
    task = make_task(tmp_path / "out")
    holder = ghost(rt, task)
    token = holder.try_take().token
    rt.redis.delete(holder.item.fence)  # a Redis that kept no data came back
    assert commit.commit(rt.redis, holder.item.fence, token) == token  # the only attempt: it wins
    assert commit.commit(rt.redis, holder.item.fence, token + 5) == token  # any other copy takes its record


def test_an_attempt_left_uncommitted_is_adopted_by_the_next_holder(rt, tmp_path):
    """An edit that finished while its worker could not reach Redis (a killed run) is committed, not redone."""
    out = tmp_path / "out"
    task = make_task(out)
    dead = ghost(rt, task)
    token = dead.try_take().token
    record = {"id": task.id, "status": "ok", "seed": task.seed, "output": ledger.image_relpath(task.id),
              "device": "cpu9", "started_at": 5.0}
    commit.Attempt(out, task.id, token).write(Image.new("RGB", (8, 8), RED), record)
    commit.Attempt(out, task.id, token - 1).write(Image.new("RGB", (8, 8), BLUE), {**record, "seed": 99})
    result = steps.process(task, rt)  # frees the gone holder's claim, then adopts its attempt
    assert result["status"] == "ok" and result.get("adopted") and result["reused"], result
    assert result["device"] == "cpu9" and result["started_at"] == 5.0 and result["attempt"] == token + 1
    assert on_disk(out) == ({**record, "attempt": token + 1}, RED)
    assert attempts_left(out) == [f"item-000.{token - 1}.json", f"item-000.{token - 1}.png"]  # another seed's


def test_an_attempt_of_another_folder_incarnation_is_never_adopted(rt, tmp_path):
    out = tmp_path / "out"
    task = make_task(out, folder="incarnation-2")
    record = {"id": task.id, "status": "ok", "seed": task.seed, "output": ledger.image_relpath(task.id),
              "folder": "incarnation-1"}
    commit.Attempt(out, task.id, 1).write(Image.new("RGB", (8, 8), RED), record)  # left before an --overwrite
    result = steps.process(task, rt)
    assert result["status"] == "ok" and not result.get("adopted") and on_disk(out)[1] != RED


# ---------------------------------------------------------------- the hand-back script (tasks/handback.py)

def test_a_late_holders_hand_back_never_frees_the_claim_of_a_newer_epoch(rt, tmp_path):
    task = make_task(tmp_path / "out")
    late = ghost(rt, task)
    first = late.try_take().token
    mine = claim.Claim(rt.redis, late.item, claim.Holder("cpu0", rt.pid, None, 0, "mine"))
    mine.free_if_gone(rt.cluster.namespace, mine.try_take().holder)
    assert mine.try_take() == claim.Taken(first + 1)
    stale = HandBack()
    late.hand_over(stale)  # the late holder wakes up and hands back
    stale.send(rt.redis)
    assert rt.redis.get(late.item.claim) == mine.lease.owner.encode()
    ours = HandBack()
    mine.hand_over(ours)
    ours.send(rt.redis)
    assert rt.redis.get(late.item.claim) is None


def test_a_hand_back_sent_twice_or_by_a_second_copy_counts_the_item_once(rt, tmp_path):
    inbox = keys.results(rt.cluster.namespace, "r5")
    barrier = BatchBarrier(keys.barrier_prefix(rt.cluster.namespace, "r5") + ":0", 0, parties=2, waiters=3)
    other = make_task(tmp_path / "out", "item-001", index=1, arrive_at=barrier.to_dict(), run="r5", report=inbox)
    steps.process(other, rt)
    task = make_task(tmp_path / "out", arrive_at=barrier.to_dict(), run="r5", report=inbox)
    for copy in range(2):  # the task, then a redelivered copy of it
        hand_back = HandBack()
        result = steps.process(task, rt, hand_back)
        hand_back.report(inbox, result)
        counted = None if copy == 0 else 2  # the computed copy arrived as its edit ended; the reused one here
        assert hand_back.send(rt.redis) == counted
        assert hand_back.send(rt.redis) == counted  # a retried script whose reply was lost
        assert result["status"] == "ok" and bool(result.get("reused")) == (copy == 1)
    assert rt.redis.scard(barrier.arrived_key) == 2 and rt.redis.llen(barrier.open_key) == 3  # opened once
    assert BatchBarrier.from_dict(barrier.to_dict()).wait(rt.redis, 0.1)
    events = [json.loads(m) for m in rt.redis.lrange(inbox, 0, -1)]
    assert [e["index"] for e in events if e.get("event") == "started"] == [1, 0]  # with the claims, once each
    assert [e["index"] for e in events if "event" not in e] == [0, 0, 0, 0]  # the producer keeps the first
    assert rt.redis.ttl(inbox) > 0


@pytest.mark.parametrize("lost", [False, True], ids=["redis-kept-its-data", "redis-came-back-empty"])
def test_a_hand_back_that_never_ran_leaves_the_item_to_its_files(rt, tmp_path, lost):
    """Redis went away between the commit and the hand-back script: the files in place are the item."""
    out = tmp_path / "out"
    inbox = keys.results(rt.cluster.namespace, "r6")
    barrier = BatchBarrier(keys.barrier_prefix(rt.cluster.namespace, "r6") + ":0", 0, parties=1, waiters=1)
    task = make_task(out, arrive_at=barrier.to_dict(), run="r6", report=inbox)
    hand_back = HandBack()
    result = steps.process(task, rt, hand_back)
    hand_back.report(inbox, result)
    with pytest.raises(redisconn.TRANSIENT):
        hand_back.send(Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.2))  # nobody there
    assert ledger.done_record(out, task.id, seed=task.seed)["attempt"] == result["attempt"]
    assert barrier.is_open(rt.redis)  # arrived as its model call ended, before the files
    item = claim.ItemKeys.of(rt.cluster.namespace, task)
    if lost:
        rt.redis.delete(item.claim, item.fence, barrier.arrived_key, barrier.open_key, inbox)
    else:  # the claim is no longer renewed: it runs out with its lease
        assert 0 < rt.redis.ttl(item.claim) <= keys.CLAIM_TTL_S
        time.sleep(keys.CLAIM_TTL_S / 3 + 1)
        assert rt.redis.ttl(item.claim) <= keys.CLAIM_TTL_S * 2 / 3
    again = steps.process(task, rt)  # the redelivered or resumed copy: reused from disk, and it arrives
    assert again["reused"] and again["attempt"] == result["attempt"] and again["status"] == "ok"
    assert barrier.is_open(rt.redis)


def test_a_start_begun_while_redis_is_away_is_made_again_by_the_items_own_thread(rt, tmp_path):
    # The thread leaving the device sends the next item's start (claim.Start.send). Redis away at that moment
    # must cost that thread nothing it raises: the item's own thread makes the start again, and it lands once.
    inbox = keys.results(rt.cluster.namespace, "r7")
    task = make_task(tmp_path / "out", run="r7", report=inbox)
    start = claim.Start(task, rt)
    start.rt = dataclasses.replace(rt, redis=redisconn.connect("redis://127.0.0.1:1/0"))  # nothing listens there
    complete = start.send()  # does not raise
    start.rt = rt  # Redis is back by the time the item's thread reads the reply
    complete()
    assert [json.loads(e)["event"] for e in rt.redis.lrange(inbox, 0, -1)] == ["started"]
    # With Redis there, the request goes out at once and the item's thread only reads its reply.
    rt.redis.delete(inbox)
    complete = claim.Start(task, rt).send()
    deadline = time.monotonic() + 5
    while rt.redis.llen(inbox) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rt.redis.llen(inbox) == 1  # in Redis before the reply is read
    complete()
    assert rt.redis.llen(inbox) == 1


def test_the_thumbnails_are_made_once_the_hand_back_is_sent(rt, tmp_path):
    out = tmp_path / "out"
    inbox = keys.results(rt.cluster.namespace, "r8")
    task = make_task(out, run="r8", report=inbox)
    hand_back = HandBack()
    result = steps.process(task, rt, hand_back)
    hand_back.report(inbox, result)
    thumb = thumbnail_path(out, out / result["output"])
    assert result["status"] == "ok" and ledger.record_path(out, task.id).is_file()
    assert not thumb.exists()  # the item is whole and reportable without them
    steps.send(rt, hand_back)
    assert [json.loads(m)["id"] for m in rt.redis.lrange(inbox, 0, -1) if "event" not in json.loads(m)] == [task.id]
    with Image.open(thumb) as im:
        assert im.format == "JPEG"
    assert hand_back.after == []  # done once
