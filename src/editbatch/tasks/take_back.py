"""Taking back a prefetched task, the copy's mark: start this copy, unless the producer took it back.

With `cluster.prefetch` 2 a worker holds its next task while it runs the
current one. When another device goes idle at the end of a run, the producer
may move that held task there (producer/take_back.py). One Redis key per
copy (its ticket) decides who wins: the holder marks it `started` as it
begins, the producer marks it `taken`; whoever writes first wins, the other
backs off. The holder marks its copy in the script that claims the item
(claim.py), once the copy has the device slot; a copy found `taken` is
skipped at once: nothing computed, no result sent, no attempt counted (the
copy on the idle device reports the item).
"""

from __future__ import annotations

from .. import keys
from .contract import EditTask

STARTED = "started"
TAKEN = "taken"

# KEYS: the copy's key. ARGV: the mark to set, TTL. -> the mark already there, or nil once ours is set.
# The producer sets `taken` with it; the holder sets `started` in the script that claims the item (claim.py).
MARK_LUA = """
local function mark(key, value, ttl)
  local found = redis.call('get', key)
  if found then return found end
  redis.call('set', key, value, 'EX', ttl)
  return false
end
"""
MARK = MARK_LUA + "return mark(KEYS[1], ARGV[1], ARGV[2])"


def key_of(namespace: str, task: EditTask) -> str | None:
    """The copy's key, or None in a mode whose tasks stay where they were sent."""
    return keys.take_back(namespace, task.run, task.ticket) if task.ticket and task.run else None
