"""Staggered model loading: at most N workers of a cluster load weights at once.

A counting semaphore in Redis made of N lease keys (see leases.py). A worker
holds one while it loads; one that dies mid-load frees its slot when the
lease runs out instead of blocking the others forever.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from redis import Redis

from .. import keys, redisconn
from ..leases import Lease


class LoadSlots:
    def __init__(self, redis: Redis, namespace: str, concurrency: int, *, lease_s: int = 60):
        self.redis = redis
        self.keys = [keys.load_slot(namespace, i) for i in range(max(1, concurrency))]
        self.lease_s = lease_s

    def acquire(self, owner: str, *, poll_s: float = 0.1, timeout_s: float | None = None) -> Lease:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            for key in self.keys:
                lease = Lease(self.redis, key, owner, self.lease_s)
                try:
                    if lease.try_take():
                        return lease
                except redisconn.TRANSIENT:
                    break  # Redis restarting: wait like for a busy slot
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no model-load slot free after {timeout_s:.0f}s")
            time.sleep(poll_s)

    @contextmanager
    def hold(self, owner: str, **kwargs) -> Iterator[str]:
        lease = self.acquire(owner, **kwargs)
        try:
            yield lease.key
        finally:
            lease.release()
