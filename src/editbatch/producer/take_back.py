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

from redis import Redis

from .. import keys
from ..tasks.take_back import MARK, TAKEN


class TakeBack:
    def __init__(self, redis: Redis, namespace: str, run_id: str, round_no: int):
        self.redis = redis
        self.namespace = namespace
        self.run_id = run_id
        self.round_no = round_no
        self.copies: dict[int, int] = {}  # ordinal -> copies sent after the first
        self.moved_from: dict[int, set[str]] = {}  # ordinal -> devices it was taken from
        self.begun: set[int] = set()  # its holder marked it started first: it stays there
        self.running_since: dict[str, float] = {}  # device -> when its current edit started
        self.moves: list[tuple[int, str, str]] = []  # (ordinal, from device, to device), for the log

    def ticket(self, ordinal: int) -> str:
        """Names the copy of this item now sent: round, ordinal, copy."""
        return f"{self.round_no}.{ordinal}.{self.copies.get(ordinal, 0)}"

    def started(self, device: str) -> None:
        self.running_since[device] = time.monotonic()

    def stale(self, ordinal: int, device: str) -> bool:
        """An event from a device this item was taken from: about the old copy, which never runs."""
        return device in self.moved_from.get(ordinal, ())

    def choose(self, idle: list[str], waiting: dict[int, str], running: set[str]) -> list[tuple[int, str]]:
        """(item, idle device) pairs: held items whose holders run something, those whose current edit
        began last first (they would start last)."""
        movable = [o for o, holder in waiting.items() if holder in running and o not in self.begun]
        movable.sort(key=lambda o: -self.running_since.get(waiting[o], 0.0))
        pairs, free = [], list(idle)
        for o in movable:
            to = next((d for d in free if d not in self.moved_from.get(o, ())), None)
            if to is None:
                break
            free.remove(to)
            pairs.append((o, to))
        return pairs

    def take(self, ordinal: int, holder: str, to: str) -> bool:
        """Take the held copy back (True), unless its holder started it first."""
        key = keys.take_back(self.namespace, self.run_id, self.ticket(ordinal))
        if self.redis.eval(MARK, 1, key, TAKEN, keys.TAKE_BACK_TTL_S) is not None:
            self.begun.add(ordinal)
            return False
        self.copies[ordinal] = self.copies.get(ordinal, 0) + 1
        self.moved_from.setdefault(ordinal, set()).add(holder)
        self.moves.append((ordinal, holder, to))
        return True
