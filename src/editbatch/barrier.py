"""The batch barrier of sync mode, kept in Redis and enforced where the tasks run.

Batch k+1 is queued at the devices while batch k runs; each of its tasks
waits here until every task of batch k has finished, then starts at once.
Holding the sync point on the workers takes the producer's round trip
(result -> producer -> next group -> worker fetch) off the critical path
between batches, while keeping the rule exact: no task of batch k+1 starts
before every task of batch k finished.

Each batch has two keys: a counter of finished tasks, and a list of start
tokens, one per task of the next batch, pushed by whoever finishes last.
The counter decides; a token only wakes a waiter at once. Waiting is a
blocking pop on the token list in short slices (see redisconn.py), with the
counter checked between slices, so a wait of any length survives the
client's socket timeout, a dropped connection or a lost token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from redis import Redis

from . import redisconn
from .keys import BARRIER_TTL_S

# Count an arrival; the last arrival of the batch pushes one token per waiter of the next batch.
_ARRIVE = """
local n = redis.call('incr', KEYS[1])
redis.call('expire', KEYS[1], ARGV[3])
if n == tonumber(ARGV[1]) and tonumber(ARGV[2]) > 0 then
  for i = 1, tonumber(ARGV[2]) do redis.call('rpush', KEYS[2], '1') end
  redis.call('expire', KEYS[2], ARGV[3])
end
return n
"""


# Open a batch whose tasks are all accounted for, if arrivals were lost (a Redis restart): idempotent.
_FORCE_OPEN = """
local n = tonumber(redis.call('get', KEYS[1]) or '0')
if n < tonumber(ARGV[1]) then
  redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[3])
  for i = 1, tonumber(ARGV[2]) do redis.call('rpush', KEYS[2], '1') end
  redis.call('expire', KEYS[2], ARGV[3])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class BatchBarrier:
    """The barrier behind batch `batch` of a run: `parties` tasks, then `waiters` tasks may start."""

    prefix: str  # "<namespace>:run:<run id>:barrier"
    batch: int
    parties: int
    waiters: int

    @property
    def arrived_key(self) -> str:
        return f"{self.prefix}:{self.batch}:arrived"

    @property
    def open_key(self) -> str:
        return f"{self.prefix}:{self.batch}:open"

    def arrive(self, redis: Redis, index: int | None = None) -> int:
        """Record that one task of this batch finished (ok or not); returns how many have."""
        return int(redis.eval(_ARRIVE, 2, self.arrived_key, self.open_key, self.parties, self.waiters,
                              BARRIER_TTL_S))

    def force_open(self, redis: Redis, indexes=None) -> bool:
        """Count every party in (the producer knows they all finished); True if arrivals were missing."""
        return bool(redis.eval(_FORCE_OPEN, 2, self.arrived_key, self.open_key, self.parties, self.waiters,
                               BARRIER_TTL_S))

    def is_open(self, redis: Redis) -> bool:
        return int(redis.get(self.arrived_key) or 0) >= self.parties

    def wait(self, redis: Redis, timeout_s: float, *, stop: Callable[[], bool] | None = None) -> bool:
        """Block until the batch is done (True), or `timeout_s` passes or `stop()` turns true (False)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if redisconn.retrying(lambda: self.is_open(redis), max(0.0, deadline - time.monotonic())):
                return True
            left = deadline - time.monotonic()
            if left <= 0 or (stop is not None and stop()):
                return False
            redisconn.blpop(redis, [self.open_key], min(left, redisconn.BLOCK_SLICE_S))

    def to_dict(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "batch": self.batch, "parties": self.parties, "waiters": self.waiters}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BatchBarrier":
        return cls(str(data["prefix"]), int(data["batch"]), int(data["parties"]), int(data["waiters"]))
