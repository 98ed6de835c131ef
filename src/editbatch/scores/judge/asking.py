"""One asker per question across every judge worker.

An item can be in two places at once: sent again by a producer that thought
its worker gone or late, or queued by a killed run and by its resume. Each
copy misses the cache while the other is still asking, so both would ask.
The asker therefore holds a lease on the question (the item's full cache
key); a copy that finds it held waits, then reads the answer from the cache.
The lease is renewed while held, so a killed asker frees it within
`JUDGE_ASKING_TTL_S`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Iterator

from redis import Redis

from ... import keys
from ...leases import Lease

POLL_S = 0.2


class OneAsker:
    def __init__(self, redis: Redis, namespace: str, worker: str, stop: Callable[[], bool]):
        self.redis = redis
        self.namespace = namespace
        self.worker = worker
        self.stop = stop

    @contextlib.contextmanager
    def __call__(self, cache_key: str) -> Iterator[None]:
        owner = f"{self.worker}:{threading.get_ident()}"  # threads of one worker are askers of their own
        lease = Lease(self.redis, keys.judge_asking(self.namespace, cache_key), owner, keys.JUDGE_ASKING_TTL_S)
        while not lease.try_take():
            if self.stop():
                raise InterruptedError("stopped while another worker asked the same question")
            time.sleep(POLL_S)
        try:
            yield
        finally:
            lease.release()
