"""The worker's side of taking back a prefetched task: start this copy, unless the producer took it back.

With `cluster.prefetch` 2 a worker holds its next task while it runs the
current one. When another device goes idle at the end of a run, the producer
may move that held task there (producer/take_back.py). One Redis key per
copy (its ticket) decides who wins: the holder marks it `started` as it
begins, the producer marks it `taken`; whoever writes first wins, the other
backs off. A copy found `taken` is skipped at once: nothing computed, no
result sent, no attempt counted (the copy on the idle device reports the item).
"""

from __future__ import annotations

from .. import keys
from ..workers import runtime
from .contract import EditTask

STARTED = "started"
TAKEN = "taken"

# KEYS: the copy's key. ARGV: the mark to set, TTL. -> the mark already there, or nil once ours is set.
MARK = """
local found = redis.call('get', KEYS[1])
if found then return found end
redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""


def key_of(namespace: str, task: EditTask) -> str | None:
    return keys.take_back(namespace, task.run, task.ticket) if task.ticket and task.run else None


def taken_back(task: EditTask, rt: "runtime.WorkerRuntime") -> bool:
    """Mark this copy started; True if the producer had taken it back first (skip it)."""
    key = key_of(rt.cluster.namespace, task)
    if key is None:
        return False  # a mode whose tasks stay where they were sent
    rt.check_key(key)
    found = runtime.keep_retrying(lambda: rt.redis.eval(MARK, 1, key, STARTED, keys.TAKE_BACK_TTL_S))
    return found == TAKEN.encode()  # `started`: this copy again (a redelivery), still ours
