"""Taking back a prefetched task for an idle device (shared-queue modes, `cluster.prefetch` 2 or more).

A worker that prefetches holds its next task while it runs the current one:
no idle fetch between tasks. At the end of a run that strands work: a device
finds the queue empty and goes idle while another still holds a task it will
start only after its current edit. The dispatcher sees this from the
workers' "held" and "started" events; this module picks which held task goes
to which idle device, and takes it back in Redis so that exactly one copy
runs: the copy's key is set to `taken` only if its holder has not marked it
`started` (see tasks/take_back.py). The idle device then gets a new copy
with a new ticket; the holder skips the old one without computing it.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from redis import Redis

from .. import keys, redisconn
from ..tasks.take_back import MARK, TAKEN

# A move costs a round trip to Redis, a publish and the idle device's fetch: not worth it when the holder's current
# edit is about to end, i.e. has run (1 +- DUE) times the mean edit. Before that it has a good part left; after
# it, it is an edit longer than the rest, and the task held behind it is the stranded tail this module is for.
DUE = 0.25
MARK_RETRY_S = 10.0  # a reply lost to a Redis blip: asking again is safe (our own `taken` reads as done)


class TakeBack:
    def __init__(self, redis: Redis, namespace: str, run_id: str, round_no: int,
                 say: Callable[[str], None] | None = None, name_of: Callable[[int], str] = str):
        self.redis = redis
        self.say = say  # one log line per move: which item, from which device to which
        self.name_of = name_of  # ordinal -> the item's id, for that line
        self.namespace = namespace
        self.run_id = run_id
        self.round_no = round_no
        self.copies: dict[int, int] = {}  # ordinal -> copies sent after the first
        self.moved_from: dict[int, set[str]] = {}  # ordinal -> devices it was taken from
        self.begun: set[int] = set()  # its holder marked it started first: it stays there
        self.running_since: dict[str, float] = {}  # device -> when its current edit started
        self.edits, self.edit_s = 0, 0.0  # edits finished and their total time: the mean edit time

    def ticket(self, ordinal: int) -> str:
        """Names the copy of this item now sent: round, ordinal, copy."""
        return f"{self.round_no}.{ordinal}.{self.copies.get(ordinal, 0)}"

    def started(self, device: str) -> None:
        self.running_since[device] = time.monotonic()

    def finished(self, result: dict[str, Any]) -> None:
        if result.get("started_at") is not None and result.get("finished_at") is not None:
            self.edits += 1
            self.edit_s += max(0.0, result["finished_at"] - result["started_at"])

    def stale(self, ordinal: int, device: str) -> bool:
        """An event from a device this item was taken from: about the old copy, which never runs."""
        return device in self.moved_from.get(ordinal, ())

    def choose(self, idle: list[str], waiting: dict[int, str], running: set[str]) -> list[tuple[int, str]]:
        """(item, idle device) pairs: held items whose holders run an edit not about to end, those whose
        current edit began last first (they would start last)."""
        if not self.edits:
            return []  # no edit time known yet: nothing tells a stranded task from one about to start
        mean, now = self.edit_s / self.edits, time.monotonic()

        def due(holder: str) -> bool:
            return abs(now - self.running_since.get(holder, now) - mean) <= DUE * mean

        movable = [o for o, holder in waiting.items() if holder in running and o not in self.begun and not due(holder)]
        movable.sort(key=lambda o: -self.running_since.get(waiting[o], 0.0))
        pairs, free = [], list(idle)
        for o in movable:
            to = next((d for d in free if d not in self.moved_from.get(o, ())), None)
            if to is None:
                continue  # no idle device it was not taken from: another item may use them
            free.remove(to)
            pairs.append((o, to))
        return pairs

    def take(self, ordinal: int, holder: str, to: str) -> bool:
        """Take the held copy back (True), unless its holder started it first."""
        key = keys.take_back(self.namespace, self.run_id, self.ticket(ordinal))
        found = redisconn.retrying(lambda: self.redis.eval(MARK, 1, key, TAKEN, keys.TAKE_BACK_TTL_S), MARK_RETRY_S)
        if found not in (None, TAKEN.encode()):  # the holder's `started`
            self.begun.add(ordinal)
            return False
        self.copies[ordinal] = self.copies.get(ordinal, 0) + 1
        self.moved_from.setdefault(ordinal, set()).add(holder)
        if self.say is not None:
            self.say(f"[editbatch] {self.name_of(ordinal)}: taken back from {holder} (held behind its running edit) "
                     f"for idle {to}")
        return True
