"""The worker's presence record: published from several threads while its heartbeat runs, and withdrawn for good.

A real Redis (the `redis_url` fixture). `Recording` is a redis-py client that
remembers every record it SETs and can hold a SET in flight, so a heartbeat
can be caught mid-write; the code under test is the real `Presence`.
"""

from __future__ import annotations

import json
import threading
import time

from redis import Redis

from editbatch import keys
from editbatch.workers import presence as presence_module
from editbatch.workers.presence import Presence


class Recording(Redis):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.written: list[dict] = []
        self.hold_s = 0.0
        self.in_flight = threading.Event()
        self.landed = 0

    def set(self, name, value, *args, **kwargs):
        self.written.append(json.loads(value))
        if self.hold_s:
            self.in_flight.set()
            time.sleep(self.hold_s)  # the SET is on its way: a slow network, a busy Redis
        try:
            return super().set(name, value, *args, **kwargs)
        finally:
            self.landed += 1


def test_records_written_while_publishing_from_threads_are_whole(redis_url, monkeypatch):
    monkeypatch.setattr(presence_module, "BEAT_S", 0.001)
    client = Recording.from_url(redis_url)
    record = Presence(client, "editbatch", "cpu0")
    record.publish(state="ready", a=0, b=0)

    def busy(offset: int) -> None:
        for i in range(300):
            record.publish(a=offset + i, b=offset + i, **{f"k{offset + i}": i})

    threads = [threading.Thread(target=busy, args=(n * 1000,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(0.05)
    record.withdraw()
    assert len(client.written) > 900
    assert all(r["a"] == r["b"] for r in client.written)  # never a record half-updated by a publish
    assert record.snapshot()["state"] == "ready"


def test_withdraw_waits_for_a_heartbeat_in_flight_and_the_record_stays_gone(redis_url, monkeypatch):
    monkeypatch.setattr(presence_module, "BEAT_S", 0.05)
    client = Recording.from_url(redis_url)
    record = Presence(client, "editbatch", "cpu0")
    record.publish(state="ready")
    client.hold_s = 0.5
    assert client.in_flight.wait(2)  # a heartbeat is writing the record right now
    record.withdraw()
    time.sleep(0.7)  # past the held SET
    assert client.get(keys.worker("editbatch", "cpu0")) is None
    written = len(client.written)
    time.sleep(0.3)
    assert len(client.written) == written  # the heartbeat stopped
    record.publish(state="ready")  # a hook firing late does not bring it back either
    assert client.get(keys.worker("editbatch", "cpu0")) is None


def test_the_device_slot_never_waits_on_a_heartbeat_in_flight_and_the_newest_record_lands_last(redis_url, monkeypatch):
    """`publish_soon` (the device slot's busy/idle, the items worked on) only changes the record: a slow SET
    of the heartbeat does not hold the next edit back, and what it published is written after that SET."""
    monkeypatch.setattr(presence_module, "BEAT_S", 0.05)
    client = Recording.from_url(redis_url)
    record = Presence(client, "editbatch", "cpu0")
    record.publish(state="ready", working=[])
    client.hold_s = 0.5
    assert client.in_flight.wait(2)  # a heartbeat is writing the record right now
    landed = client.landed
    record.publish_soon(task="item-7", working=[7])
    assert client.landed == landed  # returned while that SET was still on its way
    client.hold_s = 0.0
    deadline = time.monotonic() + 5
    while json.loads(client.get(keys.worker("editbatch", "cpu0")) or b"{}").get("working") != [7]:
        assert time.monotonic() < deadline, client.written[-3:]
        time.sleep(0.02)
    record.withdraw()


def test_the_items_a_worker_works_on_as_the_producer_reads_them():
    """The producer's lost-item check: an item committing while the next computes is still the worker's."""
    from editbatch.liveness import Seen

    assert Seen("cpu0", {"state": "ready", "task_index": 8, "working": [7, 8]}).working == {7, 8}
    assert Seen("cpu0", {"state": "ready", "task_index": 8}).working == {8}  # a worker from before the list
    assert Seen("cpu0", {"state": "ready", "task_index": None}).working == set()
    assert Seen("cpu0", {"state": "retiring", "working": [7]}).working == set()  # not serving: settled elsewhere
    assert Seen("cpu0", None).working == set()


def test_a_burst_of_changes_is_written_once_and_the_last_one_wins(redis_url, monkeypatch):
    monkeypatch.setattr(presence_module, "GATHER_S", 1.0)  # wide: a stalled test thread still lands in it
    client = Recording.from_url(redis_url)
    record = Presence(client, "editbatch", "cpu0")
    record.publish(state="ready", working=[])
    for i in range(4):  # items take the slot, leave it, hand back: at 0 s items, many changes per beat
        record.publish_soon(working=[i], task_index=i)
        time.sleep(0.01)
    deadline = time.monotonic() + 5
    while client.landed < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # any other write of the burst would have landed by now (the next beat is 2 s away)
    written = client.written[1:]
    record.withdraw()
    assert len(written) == 1, written  # one write for the burst, well before the next beat
    assert written[0]["working"] == [3] and written[0]["task_index"] == 3
    assert json.loads(Redis.from_url(redis_url).get(keys.worker("editbatch", "cpu0")) or "null") is None  # withdrawn


def test_an_item_taken_up_is_written_at_once_with_what_was_gathered(redis_url, monkeypatch):
    monkeypatch.setattr(presence_module, "GATHER_S", 30.0)
    client = Recording.from_url(redis_url)
    record = Presence(client, "editbatch", "cpu0")
    record.publish(state="ready", working=[])
    record.publish_soon(task=None, idle_since=1.0)  # shown only: waits to be gathered
    time.sleep(0.2)
    assert client.landed == 1
    record.publish_soon(at_once=True, working=[7])  # the producer acts on it: not gathered
    deadline = time.monotonic() + 5
    while client.landed < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    record.withdraw()
    assert client.written[1]["working"] == [7] and client.written[1]["idle_since"] == 1.0
