"""The batch barrier of sync mode, kept in Redis and enforced where the tasks run.

Batch k+1 is queued at the devices while batch k runs; each of its tasks
waits here until every task of batch k has finished, then starts at once.
Holding the sync point on the workers takes the producer's round trip
(result -> producer -> next group -> worker fetch) off the critical path
between batches, while keeping the rule exact: no task of batch k+1 starts
before every task of batch k finished.

Each batch has two keys: the set of item indexes that finished, and a list
of start tokens, one per task of the next batch, pushed by the arrival that
completes the set. The set decides, and an arrival is idempotent per item: a
retried arrival (its reply lost), the producer arriving for an item it gave
up as lost, and a redelivered copy of an item arriving again all count once,
so batch k+1 never opens before every item of batch k is in. Tokens are
pushed only once the set is complete, and a waiter takes one and puts it
back in the same command (`redisconn.blpeek`): one round trip, whether the
batch opened long ago or opens during the wait (Redis wakes the blocked
waiters as the arrival's script ends), and a redelivered copy that waits too
takes no one's token. Waiting is in short slices (see redisconn.py), with the
set's size checked between slices, so a wait of any length survives the
client's socket timeout, a dropped connection or a lost token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from redis import Redis

from . import redisconn
from .keys import BARRIER_TTL_S

# Count items in (idempotently); the arrival that completes the batch pushes one token per waiter of the next.
# A Lua function, so that the worker's hand-back script (tasks/handback.py) arrives the same way.
# Returns the set's size and how many of the listed items were new.
ARRIVE_LUA = """
local function arrive(set, list, parties, waiters, ttl, indexes)
  local before = redis.call('scard', set)
  for _, i in ipairs(indexes) do redis.call('sadd', set, i) end
  redis.call('expire', set, ttl)
  local n = redis.call('scard', set)
  if before < parties and n >= parties and waiters > 0 then
    for i = 1, waiters do redis.call('rpush', list, '1') end
    redis.call('expire', list, ttl)
  end
  return {n, n - before}
end
"""
# KEYS: arrived set, open list; ARGV: parties, waiters, ttl, then the indexes arriving.
_ARRIVE = ARRIVE_LUA + """
local indexes = {}
for i = 4, #ARGV do indexes[#indexes + 1] = ARGV[i] end
return arrive(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], indexes)
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

    def arrive(self, redis: Redis, index: int) -> int:
        """Record that item `index` of this batch finished (ok or not); returns how many distinct items have."""
        return self._add(redis, [index])[0]

    def force_open(self, redis: Redis, indexes: list[int]) -> bool:
        """Count every listed item in (the producer knows they all finished); True if some were missing."""
        return self._add(redis, indexes)[1] > 0

    def _add(self, redis: Redis, indexes: list[int]) -> tuple[int, int]:
        if not indexes:
            return int(redis.scard(self.arrived_key)), 0
        size, added = redis.eval(_ARRIVE, 2, self.arrived_key, self.open_key, self.parties, self.waiters,
                                 BARRIER_TTL_S, *(int(i) for i in indexes))
        return int(size), int(added)

    def is_open(self, redis: Redis) -> bool:
        return int(redis.scard(self.arrived_key)) >= self.parties

    def wait(self, redis: Redis, timeout_s: float, *, stop: Callable[[], bool] | None = None) -> bool:
        """Block until the batch is done (True), or `timeout_s` passes or `stop()` turns true (False).

        `stop()` is asked after every slice, also while Redis is out of reach: a
        worker shutting down (its producer and Redis gone with it) must not sit
        out the whole timeout here, holding its process alive."""
        return self.wait_then(redis, timeout_s, None, stop=stop)[0]

    def wait_then(self, redis: Redis, timeout_s: float, then: Callable[[Any, str | None], Any] | None, *,
                  stop: Callable[[], bool] | None = None) -> tuple[bool, Any]:
        """`wait`, then the command `then(client, gate)` as the batch is found done: in the same round trip as
        the token (pipelined, gated on this batch's open list), or on its own when the set's size says the
        batch is done. (done, the command's reply)."""
        deadline = time.monotonic() + timeout_s
        while True:
            slice_s = min(max(0.0, deadline - time.monotonic()), redisconn.BLOCK_SLICE_S)
            if then is None:
                if redisconn.blpeek(redis, self.open_key, slice_s) is not None:
                    return True, None  # a token: the set was complete when it was pushed
            else:
                got = redisconn.blpeek_then(redis, self.open_key, lambda pipe: then(pipe, self.open_key), slice_s)
                if got is not None:
                    return True, got[1]
            try:
                if self.is_open(redis):  # complete, its tokens lost (a Redis restart) or never pushed
                    return True, (then(redis, None) if then is not None else None)
            except redisconn.TRANSIENT:
                pass  # Redis away: asked again after the next slice, which waits the outage out
            if deadline - time.monotonic() <= 0 or (stop is not None and stop()):
                return False, None

    def to_dict(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "batch": self.batch, "parties": self.parties, "waiters": self.waiters}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BatchBarrier":
        return cls(str(data["prefix"]), int(data["batch"]), int(data["parties"]), int(data["waiters"]))
