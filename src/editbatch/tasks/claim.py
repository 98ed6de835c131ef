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
from typing import Any, Callable

from redis import Redis

from .. import keys, ledger, liveness, runstate
from ..leases import Lease
from ..workers import runtime
from . import commit, take_back
from .contract import EditTask
from .failures import Skipped
from .handback import HandBack

CLAIM_POLL_S = 0.5

# KEYS: claim, fence, run state, the copy's take-back key (unused ones: the claim key, ignored).
# ARGV: holder, claim TTL, fence TTL, take-back TTL ('' no take-back), '1' to ask whether the run is over.
# -> {'over', state} | {'taken', 'taken'} | {'committed', token}
#    | {'held', token} (ours: new, or a retried call whose reply was lost) | {'busy', holder}
# Everything a task asks before it starts, in one round trip: is its run over (runstate.py's rule), did the
# producer take this copy back (take_back.py: the copy is marked started here otherwise), then the claim.
# A new token is the epoch plus one; an item without an epoch (never claimed, or its state lost with a Redis
# that kept no data) starts from Redis's clock in milliseconds, so no token is ever handed out twice.
# The claim announces nothing: the item is announced as started by the start script below, once it has the
# device (a claim may be made ahead of that, see tasks/steps.py).
_TAKE = runstate.RUN_OVER_LUA + take_back.MARK_LUA + """
if ARGV[5] == '1' then
  local over = run_over(KEYS[3])
  if over then return {'over', over} end
end
if ARGV[4] ~= '' then
  if mark(KEYS[4], '%s', ARGV[4]) == '%s' then return {'taken', '%s'} end
end
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
redis.call('hset', KEYS[2], 'epoch', string.format('%%d', token))
redis.call('expire', KEYS[2], ARGV[3])
redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
return {'held', string.format('%%d', token)}
""" % (take_back.STARTED, take_back.TAKEN, take_back.TAKEN)


# The item's start, just before its model call: is the run over (a claim made ahead of the device may be seconds
# old), and if not, the producer's "started" event. One script, so the event is in Redis before the model
# runs: an item that kills its worker there has its attempt counted. Sent as the device frees, by the thread
# leaving it (Start.send), its round trip overlaps the next thread's wake-up. Pipelined behind a sync barrier's
# wait, it is gated on the barrier's open list (a wait that timed out starts nothing).
# KEYS: run state, inbox, gate (fillers where unused); ARGV: '1' to ask the run state, the event or '', '1' to gate.
_START = runstate.RUN_OVER_LUA + """
if ARGV[3] == '1' and redis.call('llen', KEYS[3]) == 0 then return 'closed' end
if ARGV[1] == '1' then
  local over = run_over(KEYS[1])
  if over then return over end
end
if ARGV[2] ~= '' then redis.call('rpush', KEYS[2], ARGV[2]) end
return 'started'
"""


class Start:
    """The item's start script (see _START) for one task, made ready ahead of its turn on the device."""

    def __init__(self, task: EditTask, rt: "runtime.WorkerRuntime", filler: str | None = None):
        self.task, self.rt = task, rt
        state = runstate.state_key(rt.cluster.namespace, task.run)
        filler = filler or ItemKeys.of(rt.cluster.namespace, task).claim  # any key of the item's slot
        if task.report:
            rt.check_key(task.report)
        event = rt.event_json("started", task.index) if task.report else ""
        self._keys = (state or filler, task.report or filler)
        self._filler = filler
        self._argv = ("1" if state else "0", event)

    def _args(self, gate: str | None) -> tuple:
        return (_START, 3, *self._keys, gate or self._filler, *self._argv, "1" if gate else "0")

    def command(self, client: Any, gate: str | None) -> Any:
        """The script as a command on a client (its reply) or a pipeline (queued), gated on a list key or not:
        b"started" (the event pushed), b"closed" (the gate's list is empty), or the run's state if it is over."""
        return client.eval(*self._args(gate))

    def __call__(self) -> None:
        """One round trip, retried while Redis is away; Skipped if the run is over."""
        self.check(runtime.keep_retrying(lambda: self.command(self.rt.redis, None)))

    def send(self) -> Callable[[], None]:
        """The start in two halves: the script is sent now (by whichever thread sees the device free first, see
        workers/device_slot.py), its reply read by the call returned. A request that did not go out, or whose
        reply was lost, is made again whole (a second "started" event for one attempt changes nothing)."""
        pool = self.rt.redis.connection_pool
        try:
            conn = pool.get_connection()  # connects (a few quick tries) when no idle connection is pooled
        except Exception:  # noqa: BLE001 - made again whole on the task's own thread, retried while Redis is away
            return self
        try:
            conn.send_command("EVAL", *self._args(None))
        except Exception:  # noqa: BLE001 - as above
            conn.disconnect()
            pool.release(conn)
            return self

        def finish() -> None:
            try:
                said = conn.read_response()
            except Exception:  # noqa: BLE001 - lost with the connection: asked again (retried while Redis is away)
                conn.disconnect()
                said = None
            finally:
                pool.release(conn)
            if said is None:
                self()
            else:
                self.check(said)

        return finish

    def check(self, said: Any) -> None:
        if said != b"started":
            raise Skipped(f"run {self.task.run} has ended (before this item's edit started)")


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


@dataclass(frozen=True)
class Checks:
    """What the claim script asks before the claim: the run's state key, the copy's take-back key."""

    run_state: str | None = None
    ticket: str | None = None


class Claim:
    """One attempt's hold on an item: a renewed lease, and the token it was taken with."""

    def __init__(self, redis: Redis, item: ItemKeys, holder: Holder, checks: Checks = Checks()):
        self.redis = redis
        self.item = item
        self.holder = holder
        self.lease = Lease(redis, item.claim, holder.dumps(), keys.CLAIM_TTL_S)
        self.token: int | None = None
        self.checks = checks

    def try_take(self) -> Taken | Committed | Busy:
        """One round trip; Skipped when the run is over or the producer took this copy back."""
        c, filler = self.checks, self.item.claim
        kind, value = self.redis.eval(_TAKE, 4, self.item.claim, self.item.fence, c.run_state or filler,
                                      c.ticket or filler, self.lease.owner, keys.CLAIM_TTL_S,
                                      keys.ITEM_FENCE_TTL_S, keys.TAKE_BACK_TTL_S if c.ticket else "",
                                      "1" if c.run_state else "0")
        if kind == b"over":
            raise Skipped(f"run {self.holder.run} has ended")
        if kind == b"taken":
            raise Skipped("taken back for an idle device", taken_back=True)
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
    """Hold the item's claim (`claim.token` fences this attempt), or return its record if it is done.
    Skipped (nothing held) when the run is over or the producer took this copy back: asked in the same
    round trip as the claim, each time it is tried. The claim announces nothing (see `Start`)."""
    item = ItemKeys.of(rt.cluster.namespace, task)
    checks = Checks(runstate.state_key(rt.cluster.namespace, task.run), take_back.key_of(rt.cluster.namespace, task))
    if checks.ticket:
        rt.check_key(checks.ticket)
    claim = Claim(rt.redis, item, Holder(rt.device.queue, rt.pid, task.run, task.index, uuid.uuid4().hex[:12]),
                  checks)
    limit = task.wait_timeout_s or 3600.0
    deadline = time.monotonic() + limit
    while True:
        got = runtime.keep_retrying(claim.try_take)
        if isinstance(got, Taken):
            # Finished before (an earlier run whose Redis state is gone, or a copy that committed between
            # our look at Redis and our claim): its record, and the claim goes back at once.
            done = ledger.done_record(task.output_dir, task.id, seed=task.seed, model=task.model)
            if done is None:
                return claim
            claim.release()
            return done
        if isinstance(got, Committed):
            record = runtime.keep_retrying(lambda got=got: commit.committed_record(
                rt.redis, item.fence, task.output_dir, task.id, got.token, seed=task.seed, model=task.model))
            if record is not None:
                return record
            continue  # the commit named files that are gone: claimed afresh
        runtime.keep_retrying(lambda got=got: claim.free_if_gone(rt.cluster.namespace, got.holder))
        if time.monotonic() > deadline:
            raise TimeoutError(f"another worker held this item for over {limit:g}s")
        time.sleep(CLAIM_POLL_S)
