"""The batch barrier of sync mode, kept in Redis and enforced where the tasks run.

Batch k+1 is queued at the devices while batch k runs; each of its tasks
waits here until every task of batch k has finished, then starts at once.
Holding the sync point on the workers takes the producer's round trip
(result -> producer -> next group -> worker fetch) off the critical path
between batches, while keeping the rule exact: no task of batch k+1 starts
before every task of batch k finished.

Each batch has two keys: a counter of finished tasks, and a list of start
tokens, one per task of the next batch, pushed by whoever finishes last.
Waiting is a blocking pop on that list (event-driven, always with a timeout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis import Redis

TTL_S = 24 * 3600

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

    def arrive(self, redis: Redis) -> int:
        """Record that one task of this batch finished (ok or not); returns how many have."""
        return int(redis.eval(_ARRIVE, 2, self.arrived_key, self.open_key, self.parties, self.waiters, TTL_S))

    def wait(self, redis: Redis, timeout_s: float) -> bool:
        """Block until the batch is done (True) or `timeout_s` passes (False)."""
        return redis.blpop([self.open_key], timeout=max(0.001, timeout_s)) is not None

    def to_dict(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "batch": self.batch, "parties": self.parties, "waiters": self.waiters}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BatchBarrier":
        return cls(str(data["prefix"]), int(data["batch"]), int(data["parties"]), int(data["waiters"]))
