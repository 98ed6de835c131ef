"""The sync-mode batch barrier counts items, not arrivals: every kind of double arrival counts once.

Against a real Redis (the `redis_url` fixture). A batch opens (its tokens are
pushed) exactly once, when its last distinct item arrives, however often an
item arrives: a retried call, the producer arriving for an item it gave up as
lost and the worker arriving later, a redelivered copy arriving after the
batch opened, or `force_open` run again.
"""

from __future__ import annotations

import json
import threading
import time

from editbatch import redisconn
from editbatch.barrier import BatchBarrier
from editbatch.producer.watch import _payload

PREFIX = "editbatch:run:t:barrier:0"


def tokens(client, barrier: BatchBarrier) -> int:
    return client.llen(barrier.open_key)


def test_an_item_arriving_twice_counts_once(redis_url):
    client = redisconn.connect(redis_url)
    batch = BatchBarrier(PREFIX, 0, parties=3, waiters=2)
    assert batch.arrive(client, 10) == 1
    assert batch.arrive(client, 10) == 1  # the worker's `finally` retried after a lost reply
    assert batch.arrive(client, 11) == 2
    assert not batch.is_open(client) and tokens(client, batch) == 0
    assert batch.arrive(client, 12) == 3
    assert batch.is_open(client) and tokens(client, batch) == 2
    assert batch.arrive(client, 12) == 3  # a redelivered copy arriving after the batch opened
    assert tokens(client, batch) == 2  # no token for a waiter that does not exist


def test_the_producer_and_the_worker_arriving_for_one_item_count_once(redis_url):
    client = redisconn.connect(redis_url)
    batch = BatchBarrier(PREFIX, 1, parties=2, waiters=2)
    batch.arrive(client, 4)  # the producer gave item 4 up as lost and counts it in
    assert batch.arrive(client, 4) == 1  # its worker, paused, comes back and arrives too
    assert not batch.is_open(client)
    assert not batch.wait(client, timeout_s=0.3)  # the next batch still waits for item 5
    batch.arrive(client, 5)
    assert batch.wait(client, timeout_s=1)


def test_force_open_counts_the_listed_items_in_idempotently(redis_url):
    client = redisconn.connect(redis_url)
    batch = BatchBarrier(PREFIX, 2, parties=3, waiters=3)
    batch.arrive(client, 0)
    assert batch.force_open(client, [0, 1, 2]) is True  # arrivals were missing (a Redis restart lost them)
    assert batch.is_open(client) and tokens(client, batch) == 3
    assert batch.force_open(client, [0, 1, 2]) is False  # the next check finds nothing missing
    assert batch.arrive(client, 1) == 3  # and a late worker arriving changes nothing
    assert tokens(client, batch) == 3


def test_force_open_of_a_predecessor_does_not_open_on_duplicates(redis_url):
    client = redisconn.connect(redis_url)
    batch = BatchBarrier(PREFIX, 3, parties=3, waiters=1)
    assert batch.force_open(client, [7, 7]) is True
    assert not batch.is_open(client)  # one item twice is one item
    assert batch.force_open(client, []) is False


def test_each_batch_has_its_own_set(redis_url):
    client = redisconn.connect(redis_url)
    first, second = BatchBarrier(PREFIX, 4, parties=1, waiters=1), BatchBarrier(PREFIX, 5, parties=1, waiters=0)
    first.arrive(client, 0)
    assert first.is_open(client) and not second.is_open(client)
    assert BatchBarrier.from_dict(first.to_dict()) == first


def test_duplicate_arrivals_during_a_sync_run_never_open_a_batch_early(sim_run, sim_cluster, tmp_path):
    """A thread arrives again for the finished items of the batch under way, and a copy of a finished item's
    message is put back in its queue (a redelivery): no item of batch k+1 starts before all of batch k finished."""
    client = redisconn.connect(sim_cluster["url"])
    stop = threading.Event()
    seen = {"early": 0, "late": 0, "copies": 0}
    envelopes: dict[int, tuple[str, bytes]] = {}

    def inject() -> None:
        while not stop.wait(0.01):
            for key in client.scan_iter(match="editbatch:run:*:barrier:*:arrived", count=1000):
                prefix, batch, _ = key.decode().rsplit(":", 2)
                barrier = BatchBarrier(prefix, int(batch), parties=3, waiters=3)
                members = client.smembers(key)
                for member in members:
                    barrier.arrive(client, int(member))
                seen["early" if len(members) < 3 else "late"] += len(members)
            queued = [(queue, raw) for queue in ("cpu0", "cpu1", "cpu2") for raw in client.lrange(queue, 0, -1)]
            # With prefetch 2 a message spends little time in its list: most are seen in Kombu's hash of
            # messages delivered to a worker and not yet acknowledged ([message, exchange, routing key]).
            for value in client.hvals("unacked"):
                message, _, routing_key = json.loads(value)
                queued.append((routing_key, json.dumps(message).encode()))
            for queue, raw in queued:
                payload = _payload(raw)
                if payload and isinstance(payload.get("index"), int) and queue in ("cpu0", "cpu1", "cpu2"):
                    envelopes.setdefault(payload["index"], (queue, raw))
            out = tmp_path / "out-sync" / "records"
            for index, (queue, raw) in list(envelopes.items()):
                if seen["copies"] < 3 and (out / f"item-{index:03d}.json").exists():
                    client.rpush(queue, raw)  # taken next: a redelivered copy of a finished item
                    seen["copies"] += 1
                    del envelopes[index]

    injector = threading.Thread(target=inject, daemon=True)
    injector.start()
    try:
        proc, manifest, summary = sim_run(12, mode="sync", params={"seconds": 0.3, "jitter": 0.6})
    finally:
        stop.set()
        injector.join(5)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert sorted(r["id"] for r in manifest) == [f"item-{i:03d}" for i in range(12)]
    assert all(r["status"] == "ok" for r in manifest)
    print(f"duplicate arrivals: {seen['early']} while their batch was incomplete, {seen['late']} after; "
          f"{seen['copies']} message copies")
    assert seen["early"] > 0 and seen["copies"] > 0
    for k in range(1, 4):
        before = max(r["finished_at"] for r in manifest if r["batch"] == k - 1)
        assert min(r["started_at"] for r in manifest if r["batch"] == k) >= before, k


def test_one_arrival_wakes_every_waiter_at_once_and_a_token_is_never_used_up(redis_url):
    batch = BatchBarrier(PREFIX, 6, parties=2, waiters=1)  # one token, more waiters than that
    woke: list[float] = []

    def waiter() -> None:
        if batch.wait(redisconn.connect(redis_url), timeout_s=5):
            woke.append(time.monotonic())

    threads = [threading.Thread(target=waiter) for _ in range(4)]
    for t in threads:
        t.start()
    client = redisconn.connect(redis_url)
    batch.arrive(client, 0)
    time.sleep(0.3)
    assert woke == []
    opened = time.monotonic()
    batch.arrive(client, 1)
    for t in threads:
        t.join(5)
    assert len(woke) == 4 and max(woke) - opened < 1.0  # not a 2 s slice later
    assert tokens(client, batch) == 1 and batch.wait(client, timeout_s=0.5)  # a redelivered copy passes too


def test_the_wake_runs_a_command_as_the_batch_opens_and_a_slice_that_times_out_starts_nothing(redis_url):
    # Sync mode starts an item (claim.Start.command: the run's state, the "started" event) in the round trip
    # that wakes it: a run cancelled while the item waited (here several blocking slices) is seen then.
    batch = BatchBarrier(PREFIX, 7, parties=1, waiters=2)
    client = redisconn.connect(redis_url)
    client.set("editbatch:run:t:state", "running")
    calls: list[str | None] = []

    def then(c, gate):  # what the start script does with its gate: nothing while the gate's list is empty
        calls.append(gate)
        return c.eval("if KEYS[2] ~= 'none' and redis.call('llen', KEYS[2]) == 0 then return 'closed' end "
                      "return redis.call('get', KEYS[1])", 2, "editbatch:run:t:state", gate or "none")

    got: list[tuple[bool, bytes | None]] = []
    waiter = threading.Thread(target=lambda: got.append(batch.wait_then(redisconn.connect(redis_url), 30, then)))
    waiter.start()
    time.sleep(redisconn.BLOCK_SLICE_S * 3)
    assert got == [] and len(calls) >= 2  # each slice that timed out ran the command, which saw no token
    client.set("editbatch:run:t:state", "cancelled")
    batch.arrive(client, 0)
    waiter.join(10)
    assert got == [(True, b"cancelled")]
    # Opened already: the token and the reply come back at once; without a command, only the token.
    assert batch.wait_then(client, 1, then) == (True, b"cancelled")
    assert batch.wait_then(client, 1, None) == (True, None)
    # Its tokens lost (a Redis restart): found open by the set's size, the command run on its own, ungated.
    client.delete(batch.open_key)
    calls.clear()
    assert batch.wait_then(client, 1, then) == (True, b"cancelled") and calls[-1] is None
