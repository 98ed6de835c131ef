"""The end of one item on a worker: its Redis writes after the edit, in one script.

Once the item's files are committed and in place (see commit.py: the commit
is its own compare-and-set, because it decides which attempt's files move),
Redis is told three things: free the item's claim, count the item in at its
batch's barrier, push the result to the producer's inbox. One script does
all three, atomically, in one round trip:

- the claim is deleted only while it still names this holder (each claim's
  holder string carries its own nonce, and a newer claim is a newer epoch):
  a late holder never frees the claim of the holder that replaced it;
- the arrival adds the item's index to the batch's set, so a retried or
  redelivered copy counts once; the arrival that completes the batch pushes
  the next batch's start tokens in the same script (see barrier.py);
- the result is pushed with the inbox's TTL.

Every part may run again (a retried script whose reply was lost): the
release and the arrival are idempotent, and the producer drops a second
result for a settled item. If Redis stays away, the item's files are
already in place: the producer's watch or a resume finds its record, and
the claim runs out with its lease.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from redis import Redis

from .. import keys
from ..barrier import ARRIVE_LUA

# KEYS: claim, arrived set, open list, inbox (unused ones: any key of the run, ignored).
# ARGV: holder ('' none), index ('' no arrival), parties, waiters, barrier ttl, result ('' none), result ttl.
# Returns the batch's arrived count (-1 without an arrival).
_HAND_BACK = ARRIVE_LUA + """
if ARGV[1] ~= '' and redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
local arrived = -1
if ARGV[2] ~= '' then
  arrived = arrive(KEYS[2], KEYS[3], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], {ARGV[2]})[1]
end
if ARGV[6] ~= '' then
  redis.call('rpush', KEYS[4], ARGV[6])
  redis.call('expire', KEYS[4], ARGV[7])
end
return arrived
"""


@dataclass
class HandBack:
    """What one item still owes Redis, gathered by the steps and sent by `send` in one round trip."""

    claim_key: str | None = None
    holder: str | None = None
    barrier: Any = None  # barrier.BatchBarrier of the item's batch, when it arrives at one
    index: int | None = None
    inbox: str | None = None
    result: dict[str, Any] | None = field(default=None, repr=False)
    working: int | None = None  # the item's index, listed as worked on by this worker until sent (activity.py)
    # Work owed to nobody (the report's thumbnails: a cache), done once the script is sent, so the result
    # does not wait for it.
    after: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def release(self, claim_key: str, holder: str) -> None:
        self.claim_key, self.holder = claim_key, holder

    def arrive(self, barrier, index: int) -> None:
        self.barrier, self.index = barrier, index

    def report(self, inbox: str, result: dict[str, Any]) -> None:
        self.inbox, self.result = inbox, result

    @property
    def empty(self) -> bool:
        return self.holder is None and self.barrier is None and self.result is None

    def send(self, redis: Redis) -> int | None:
        """Run the script (nothing when there is nothing to send); the batch's arrived count, if it arrived."""
        if self.empty:
            return None
        b = self.barrier
        filler = self.claim_key or (b.arrived_key if b else self.inbox)
        arrived = int(redis.eval(
            _HAND_BACK, 4, self.claim_key or filler, b.arrived_key if b else filler, b.open_key if b else filler,
            self.inbox or filler, self.holder or "", "" if b is None else int(self.index),
            b.parties if b else 0, b.waiters if b else 0, keys.BARRIER_TTL_S,
            json.dumps(self.result) if self.result is not None else "", keys.RESULT_TTL_S))
        return None if arrived < 0 else arrived
