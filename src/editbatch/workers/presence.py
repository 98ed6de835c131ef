"""Worker records in Redis: loading, ready or failed, kept alive by a heartbeat.

One key per device queue (``<namespace>:worker:<queue>``) holding a JSON
record with a short TTL that a background thread keeps refreshing. A worker
that dies silently disappears within the TTL; the producer waits for every
configured queue to show ``state: ready``.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from redis import Redis

from .. import keys
from ..keys import PRESENCE_BEAT_S as BEAT_S
from ..keys import PRESENCE_TTL_S as TTL_S

# How long `publish_soon` changes are gathered into one write (status's busy or idle, an item leaving
# `working` once its result is sent): shown, not acted on.
GATHER_S = 0.1


class Presence:
    """The worker's record, rewritten by a heartbeat thread until `withdraw`.

    `publish` (the device slot, the guard, model switches) and the beat run
    on different threads: the record is changed and serialised under one
    lock, so the beat never writes a record half-updated or fails on a dict
    that changes while it is read. `withdraw` stops the beat first and
    deletes after any write in flight, so a withdrawn worker does not come
    back.
    """

    def __init__(self, redis: Redis, namespace: str, queue: str, *, beat_redis: Redis | None = None):
        self.redis = redis
        # The beat's own client, whose calls give up within a beat (redisconn.quick): after a network cut
        # the record is written again as soon as the link is back, not when TCP's backoff lets a stuck call end.
        self._beat_redis = beat_redis or redis
        self.key = keys.worker(namespace, queue)
        self.record: dict[str, Any] = {}
        # Two locks, always taken in this order: `_write` around every SET or DEL (so writes land in the order
        # their records were made), `_lock` around the record alone: `publish_soon` never waits on Redis.
        self._write = threading.Lock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # write now (publish_soon, withdraw), not at the next beat
        self._now = threading.Event()  # ...without gathering (publish_soon(at_once=True), withdraw)
        self._thread: threading.Thread | None = None

    def publish(self, **fields: Any) -> None:
        with self._write:
            with self._lock:
                if self._stop.is_set():
                    return  # withdrawn: the worker is leaving
                self.record.update(fields)
                data = json.dumps(self.record)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._beat, name="editbatch-presence", daemon=True)
                    self._thread.start()
            self.redis.set(self.key, data, ex=TTL_S)

    def publish_soon(self, *, at_once: bool = False, **fields: Any) -> None:
        """Change the record now and let the beat thread write it: for the device slot and the task's
        activity, so that a worker between two items does not wait on Redis. Changes are gathered for
        GATHER_S into one write, unless `at_once`: evidence the producer acts on (an item now worked on
        here, so not lost) goes out as soon as the thread runs, with whatever was gathered."""
        with self._lock:
            beating = self._thread is not None
            if beating and not self._stop.is_set():
                self.record.update(fields)
        if not beating:
            return self.publish(**fields)  # nothing written yet: no beat to hand it to
        if at_once:
            self._now.set()
        self._wake.set()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.record)

    def _beat(self) -> None:
        while True:
            if self._wake.wait(BEAT_S):
                # Changes come in bursts (each item takes the slot, leaves it, hands back): one write carries
                # all of a short spell's, not one each (at 0 s items: 3 SETs an item instead of 5, Redis's count).
                self._now.wait(GATHER_S)
            self._wake.clear()
            self._now.clear()
            with self._write:
                with self._lock:
                    if self._stop.is_set():
                        return
                    data = json.dumps(self.record)
                try:
                    # Rewrite rather than expire: the record survives a Redis restart.
                    self._beat_redis.set(self.key, data, ex=TTL_S)
                except Exception:  # noqa: BLE001 - a missed beat is retried on the next one
                    pass

    def withdraw(self) -> None:
        with self._write:  # waits for a beat or publish in flight; none writes after this
            with self._lock:
                self._stop.set()
            self._now.set()
            self._wake.set()
            try:
                self.redis.delete(self.key)
            except Exception:  # noqa: BLE001 - the TTL removes it anyway
                pass


def read_workers(redis: Redis, namespace: str, queues: list[str]) -> dict[str, dict[str, Any] | None]:
    values = redis.mget([keys.worker(namespace, q) for q in queues]) if queues else []
    return {q: (json.loads(v) if v else None) for q, v in zip(queues, values)}
