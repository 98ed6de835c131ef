"""Claiming an item: one holder computes it at a time, and every claim gets a fencing token.

Two copies of one item (a resumed run and a task of the killed run it
replaces, a redelivered message, a copy sent again after its worker was
judged gone) never compute at the same time while both live: the second
waits for the first, then reuses its record. A claim whose holder is gone
(`liveness.gone`, the one rule) is freed at once rather than after its lease
runs out. Taking a claim increments the item's epoch in the same script, and
that number is the attempt's token: a holder judged gone that wakes up later
still finishes its edit, but its commit (see commit.py) is refused.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from redis import Redis

from .. import keys, ledger, liveness
from ..leases import Lease
from ..workers import runtime
from . import commit
from .handback import HandBack
from .contract import EditTask

CLAIM_POLL_S = 0.5

# KEYS: claim, fence, inbox. ARGV: holder, claim TTL, fence TTL, "started" event ('' none).
# -> {'committed', token} | {'held', token} (ours: new, or a retried call whose reply was lost) | {'busy', holder}
# A new token is the epoch plus one; an item without an epoch (never claimed, or its state lost with a Redis
# that kept no data) starts from Redis's clock in milliseconds, so no token is ever handed out twice.
# The claim is where the item becomes this worker's: the producer's "started" event goes out in the same script.
_TAKE = """
local committed = redis.call('hget', KEYS[2], 'committed')
if committed then return {'committed', committed} end
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then return {'held', redis.call('hget', KEYS[2], 'epoch')} end
if holder then return {'busy', holder} end
local epoch = redis.call('hget', KEYS[2], 'epoch')
local token
if epoch then
  token = tonumber(epoch) + 1
else
  local now = redis.call('time')
  token = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end
redis.call('hset', KEYS[2], 'epoch', string.format('%d', token))
redis.call('expire', KEYS[2], ARGV[3])
redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
if ARGV[4] ~= '' then redis.call('rpush', KEYS[3], ARGV[4]) end
return {'held', string.format('%d', token)}
"""


@dataclass(frozen=True)
class ItemKeys:
    claim: str
    fence: str

    @classmethod
    def of(cls, namespace: str, task: EditTask) -> "ItemKeys":
        where = os.path.realpath(task.output_dir)
        return cls(keys.item_claim(namespace, where, task.id, task.folder),
                   keys.item_fence(namespace, where, task.id, task.folder))


@dataclass(frozen=True)
class Holder:
    """Who holds a claim: the worker (its queue and process), and which task of which run."""

    queue: str
    pid: int
    run: str | None
    index: int
    nonce: str  # tells this claim from an earlier one of the same process

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def loads(cls, raw: bytes | str) -> "Holder | None":
        try:
            data = json.loads(raw)
            return cls(str(data["queue"]), int(data["pid"]), data.get("run"), int(data.get("index", 0)),
                       str(data.get("nonce", "")))
        except (ValueError, TypeError, KeyError):
            return None  # not ours (an older worker's claim): left to its lease


@dataclass(frozen=True)
class Taken:
    token: int


@dataclass(frozen=True)
class Committed:
    token: int


@dataclass(frozen=True)
class Busy:
    holder: bytes


class Claim:
    """One attempt's hold on an item: a renewed lease, and the token it was taken with."""

    def __init__(self, redis: Redis, item: ItemKeys, holder: Holder, started: tuple[str, str] | None = None):
        self.redis = redis
        self.item = item
        self.holder = holder
        self.lease = Lease(redis, item.claim, holder.dumps(), keys.CLAIM_TTL_S)
        self.token: int | None = None
        self.started = started  # (inbox key, event): pushed when the claim is taken

    def try_take(self) -> Taken | Committed | Busy:
        inbox, event = self.started or (self.item.claim, "")
        kind, value = self.redis.eval(_TAKE, 3, self.item.claim, self.item.fence, inbox, self.lease.owner,
                                      keys.CLAIM_TTL_S, keys.ITEM_FENCE_TTL_S, event)
        if kind == b"committed":
            return Committed(int(value))
        if kind == b"busy":
            return Busy(value)
        if self.token is None:
            self.token = int(value)
            self.lease.keep()
        return Taken(self.token)

    def free_if_gone(self, namespace: str, holder: bytes) -> str | None:
        """Free the claim of a holder that is gone (why it is), so the item need not wait out the lease."""
        other = Holder.loads(holder)
        if other is None:
            return None
        why = liveness.gone(self.redis, namespace, other.queue, other.pid)
        if why:
            Lease(self.redis, self.item.claim, holder.decode(errors="replace"), keys.CLAIM_TTL_S).free(holder)
        return why

    def release(self) -> None:
        self.lease.release()

    def hand_over(self, hand_back: HandBack) -> None:
        """Stop renewing; the release goes with the item's hand-back script (compare-and-delete, as `release`)."""
        self.lease.stop_renewing()
        hand_back.release(self.item.claim, self.lease.owner)


def take(task: EditTask, rt: "runtime.WorkerRuntime") -> Claim | dict[str, Any]:
    """Hold the item's claim (`claim.token` fences this attempt), or return its record if it is done."""
    item = ItemKeys.of(rt.cluster.namespace, task)
    started = (task.report, rt.event_json("started", task.index)) if task.report else None
    if started:
        rt.check_key(task.report)
    claim = Claim(rt.redis, item, Holder(rt.device.queue, rt.pid, task.run, task.index, uuid.uuid4().hex[:12]),
                  started)
    limit = task.wait_timeout_s or 3600.0
    deadline = time.monotonic() + limit
    while True:
        done = ledger.done_record(task.output_dir, task.id, seed=task.seed, model=task.model)
        if done is not None:
            return done
        got = runtime.keep_retrying(claim.try_take)
        if isinstance(got, Taken):
            done = ledger.done_record(task.output_dir, task.id, seed=task.seed, model=task.model)
            if done is None:
                return claim
            claim.release()  # finished between our look and our claim
            return done
        if isinstance(got, Committed):
            record = runtime.keep_retrying(lambda got=got: commit.committed_record(
                rt.redis, item.fence, task.output_dir, task.id, got.token, seed=task.seed, model=task.model))
            if record is not None:
                return record
            continue  # the commit named files that are gone: claimed afresh
        if rt.run_ended(task.run):
            raise RuntimeError(f"run {task.run} ended while another worker held this item")
        runtime.keep_retrying(lambda got=got: claim.free_if_gone(rt.cluster.namespace, got.holder))
        if time.monotonic() > deadline:
            raise TimeoutError(f"another worker held this item for over {limit:g}s")
        time.sleep(CLAIM_POLL_S)
