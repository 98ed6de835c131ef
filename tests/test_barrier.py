"""The sync-mode batch barrier counts items, not arrivals: every kind of double arrival counts once.

Against a real Redis (the `redis_url` fixture). A batch opens (its tokens are
pushed) exactly once, when its last distinct item arrives, however often an
item arrives: a retried call, the producer arriving for an item it gave up as
lost and the worker arriving later, a redelivered copy arriving after the
batch opened, or `force_open` run again.
"""

from __future__ import annotations

from editbatch import redisconn
from editbatch.barrier import BatchBarrier

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
