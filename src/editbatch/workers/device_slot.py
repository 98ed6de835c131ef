"""The device's one slot: a worker runs its prefetched tasks side by side, but one at a time on the GPU.

A worker holds `cluster.prefetch` tasks, each on its own thread of Celery's
threads pool. Only the holder of this slot touches the model (the claim, the
model call, the worker-side metrics); the rest of an item (writing and
fsyncing its files, the commit, thumbnails, the hand-back, Celery's ack) runs
after the slot is passed on, while the next item already computes. So the
device is idle between two items only for the slot's hand-over to the next
item's thread and that item's start (see below).

The slot is first come, first served: tasks enter in the order the worker
received them (the order the producer dispatched them). A task waiting here
has not started: the producer may still take it back (tasks/take_back.py),
and a worker shutting down or retiring hands it back to its queue instead of
starting it. The next task claims its item shortly before the running edit
is expected to end (`prepare`), so the claim's round trip is not part of the
device's gap between two edits; from then on the producer cannot take it
back. It is announced as started the moment the device frees: the holder
leaving sends that request (`begin`) for it, so the request's round trip
and the next thread's wake-up overlap.
The expected end comes from recent holds of the same group (the run): the
edits of another run, or another model, say nothing about this one's.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from typing import Callable, Iterator


class GiveBack(Exception):
    """The worker is leaving: the task waiting for the slot goes back to its queue, not started."""


class _Turn:
    """A task waiting for the slot, and what the holder before it starts for it as it leaves."""

    __slots__ = ("prepared", "begin", "leaving", "begun")

    def __init__(self, begin: Callable[[], Callable[[], None]] | None, leaving: Callable[[], bool]):
        self.prepared = False
        self.begin = begin
        self.leaving = leaving
        self.begun: Callable[[], None] | None = None


class DeviceSlot:
    # How long before the slot is expected to free the next turn prepares (claims its item): a claim's round
    # trip is 1-10 ms on a loaded host, so it overlaps the running edit instead of following it.
    PREPARE_S = 0.025
    TYPICAL_OF = 8  # the expected hold is the median of this many recent ones

    def __init__(self, on_busy: Callable[[dict | None], None] | None = None):
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()  # waiting turns, first in first served
        self._held = False
        self._held_since = 0.0  # monotonic
        self._recent: deque[float] = deque(maxlen=self.TYPICAL_OF)  # lengths of recent holds, seconds
        self._recent_group: object = None  # ...all of this group
        self._held_group: object = None
        self._on_busy = on_busy  # told what holds the slot (a task's fields), then None when it is free
        self._changes = 0  # each take and release of the slot, in order (under _cond)
        self._told = 0  # the latest change told: an older one, told late by another thread, is dropped
        self._tell_lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, what: dict | None = None, *, leaving: Callable[[], bool] = lambda: False,
             prepare: Callable[[], None] | None = None, begin: Callable[[], Callable[[], None]] | None = None,
             group: object = None) -> Iterator[None]:
        """Wait for the slot (in arrival order) and hold it for the block. GiveBack when `leaving()` is true
        once the slot is ours: the task is not started.

        `prepare` runs first, off the slot, once this turn is next and the holder is expected to leave
        within PREPARE_S (from the median of recent holds of the holder's `group`; when the slot is free,
        at once; with no such holds, once it is free). If it raises, the turn leaves the queue and the
        exception propagates.

        `begin` starts the turn's first request the moment the device is free and returns what completes it
        (its reply, read once the slot is ours, before the block). A prepared turn next in line is begun by the
        holder as it leaves, on the holder's thread: the request's round trip then overlaps this thread's
        wake-up instead of following it. A turn whose worker is leaving is not begun."""
        turn = _Turn(begin, leaving)
        with self._cond:
            self._queue.append(turn)
        try:
            if prepare is not None:
                self._wait_until_due(turn)
                prepare()
            with self._cond:
                turn.prepared = True
                while self._held or self._queue[0] is not turn:
                    self._cond.wait()
                self._queue.popleft()
                self._held = True
                self._held_since = time.monotonic()
                self._held_group = group
                self._changes += 1
                taken = self._changes
                if self._queue:
                    self._cond.notify_all()  # the turn now next times its preparation from this hold
        except BaseException:
            with self._cond:
                if turn in self._queue:
                    self._queue.remove(turn)
                    self._cond.notify_all()
            if turn.begun is not None:
                with contextlib.suppress(BaseException):
                    turn.begun()  # its reply read, so its connection goes back clean
            raise
        try:
            if turn.begun is None and leaving():
                raise GiveBack("this worker is leaving; not started, back to the queue")
            self._tell(taken, dict(what or {}, busy_since=time.time()))
            if turn.begun is not None:
                turn.begun()
            elif begin is not None:
                begin()()
            yield
        finally:
            self._begin_next()
            with self._cond:
                self._held = False
                if group != self._recent_group:
                    self._recent.clear()
                    self._recent_group = group
                self._recent.append(time.monotonic() - self._held_since)
                self._changes += 1
                freed, waiting = self._changes, bool(self._queue)
                self._cond.notify_all()
            if not waiting:
                self._tell(freed, None)  # idle; with a task waiting, the next holder tells at once

    def _begin_next(self) -> None:
        """Begin the next turn's request now, while the slot is still held: the turn is next in line and
        prepared, so nothing but it takes the slot after this holder."""
        with self._cond:
            turn = self._queue[0] if self._queue else None
            if turn is None or not turn.prepared or turn.begin is None:
                return
        try:
            if not turn.leaving():
                turn.begun = turn.begin()
        except Exception:  # noqa: BLE001 - the turn begins on its own thread instead, and meets the error there
            turn.begun = None

    def _wait_until_due(self, turn: _Turn) -> None:
        """Until `turn` is next and the slot is free or expected to be within PREPARE_S."""
        with self._cond:
            while True:
                wait = None
                if self._queue[0] is turn:
                    if not self._held:
                        return
                    if self._recent and self._held_group == self._recent_group:
                        typical = sorted(self._recent)[len(self._recent) // 2]
                        wait = self._held_since + typical - self.PREPARE_S - time.monotonic()
                        if wait <= 0:
                            return
                self._cond.wait(wait)

    def _tell(self, change: int, what: dict | None) -> None:
        if self._on_busy is None:
            return
        with self._tell_lock:
            if change < self._told:
                return
            self._told = change
            try:
                self._on_busy(what)
            except Exception:  # noqa: BLE001 - status is informative; the slot must never fail for it
                pass
