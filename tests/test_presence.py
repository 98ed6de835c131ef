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

    def set(self, name, value, *args, **kwargs):
        self.written.append(json.loads(value))
        if self.hold_s:
            self.in_flight.set()
            time.sleep(self.hold_s)  # the SET is on its way: a slow network, a busy Redis
        return super().set(name, value, *args, **kwargs)


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
