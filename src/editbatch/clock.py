"""Times taken on several hosts, put on one clock.

Workers stamp `started_at` / `finished_at` / `reported_at` with their own
wall clock (epoch seconds), and `finished_at` is `started_at` plus the
edit's duration on the monotonic clock, so no edit lasts a negative or
stepped time. Each result also carries the worker's clock against Redis's
(`clock_vs_redis_s`, from Redis's TIME, good to half a round trip); the
producer measures its own the same way, and a worker whose clock is more
than `TRUSTED_SKEW_S` off the producer's has its times moved onto the
producer's clock (the manifest line keeps the shift as `clock_offset_s`).
Clocks kept by NTP (milliseconds apart) are left as they are.

`EDITBATCH_TEST_CLOCK_OFFSET_S` shifts this process's clock: a test-only hook
to act a host whose clock is wrong.
"""

from __future__ import annotations

import os
import time
from typing import Any

from redis import Redis

OFFSET_ENV = "EDITBATCH_TEST_CLOCK_OFFSET_S"
TRUSTED_SKEW_S = 1.0
TIMES = ("started_at", "finished_at", "reported_at")
_OFFSET = float(os.environ.get(OFFSET_ENV) or 0.0)


def now() -> float:
    """This host's wall clock, as reported to others (epoch seconds)."""
    return time.time() + _OFFSET


def versus_redis(redis: Redis) -> float:
    """This host's clock minus Redis's (seconds), measured around one TIME command."""
    before = now()
    seconds, micros = redis.time()
    after = now()
    return (before + after) / 2 - (seconds + micros / 1e6)


def on_producer_clock(result: dict[str, Any], producer_vs_redis: float | None) -> dict[str, Any]:
    """`result` with its worker's times moved onto the producer's clock when the two disagree by much."""
    worker_vs_redis = result.get("clock_vs_redis_s")
    if worker_vs_redis is None or producer_vs_redis is None or result.get("reused"):
        return result  # a reused item's times were taken by whichever worker computed it, maybe on another host
    offset = round(worker_vs_redis - producer_vs_redis, 3)  # the shift applied is the one the manifest names
    if abs(offset) <= TRUSTED_SKEW_S:
        return result
    moved = {k: result[k] - offset for k in TIMES if isinstance(result.get(k), (int, float))}
    return {**result, **moved, "clock_offset_s": offset}
