"""Staggered model loading: at most N workers of a cluster load weights at once.

A counting semaphore in Redis made of N lease keys. A worker holds a key
while it loads and refreshes the lease from a background thread, so a
worker that dies mid-load frees its slot when the lease runs out instead of
blocking the others forever.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

from redis import Redis

from .. import keys, redisconn

# Delete the key only if we still own it (never free someone else's slot).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end return 0"


class LoadSlots:
    def __init__(self, redis: Redis, namespace: str, concurrency: int, *, lease_s: int = 60):
        self.redis = redis
        self.keys = [keys.load_slot(namespace, i) for i in range(max(1, concurrency))]
        self.lease_s = lease_s

    def acquire(self, owner: str, *, poll_s: float = 0.1, timeout_s: float | None = None) -> str:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            for key in self.keys:
                try:
                    if self.redis.set(key, owner, nx=True, ex=self.lease_s):
                        return key
                except redisconn.TRANSIENT:
                    break  # Redis restarting: wait like for a busy slot
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no model-load slot free after {timeout_s:.0f}s")
            time.sleep(poll_s)

    def release(self, key: str, owner: str) -> None:
        self.redis.eval(_RELEASE, 1, key, owner)

    @contextmanager
    def hold(self, owner: str, **kwargs) -> Iterator[str]:
        key = self.acquire(owner, **kwargs)
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lease_s / 3):
                try:
                    self.redis.eval(_RENEW, 1, key, owner, self.lease_s)
                except Exception:  # noqa: BLE001 - retried on the next beat, well inside the lease
                    pass

        thread = threading.Thread(target=renew, name="editbatch-load-lease", daemon=True)
        thread.start()
        try:
            yield key
        finally:
            stop.set()
            thread.join()
            self.release(key, owner)
