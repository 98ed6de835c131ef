"""Release policies: which items go to which queue, and when.

A policy works on ordinals 0..n-1 (the valid items in input order). The
producer calls `start()` once and `done(ordinal)` for every finished item;
both return the items to submit now. Policies know nothing of Celery or time,
so the same objects drive the real producer and the zero-overhead replay in
`replay.py`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Assignment:
    ordinal: int
    queue: str
    batch: int | None = None


class Policy:
    """A mode: its release rule and the facts the rest of editbatch asks about it.

    A new mode is a subclass here (and its test): the producer, the progress
    lines, the summary and the report read these attributes instead of
    comparing mode names.
    """

    mode = ""
    label = ""  # the progress bar's prefix, as in the seed's logs
    batched = False  # items carry a batch number (the report colours batches)
    synchronised = False  # a barrier between batches: its idle time is this mode's cost
    per_device_queues = False  # items go to fixed devices (the assignment table lists them)
    skew_bounded = False  # `schedule.max_skew` applies
    # A task prefetched by a busy device may move to an idle one (`schedule.take_back`): any device may run
    # any item, so the end of the run is not stranded behind held tasks.
    takes_back = False

    def __init__(self, n: int):
        self.n = n
        self.finished = 0

    @classmethod
    def build(cls, n: int, queues: list[str], shared_queue: str, *, depth: int, max_skew: int,
              lookahead: int) -> "Policy":
        raise NotImplementedError

    @classmethod
    def in_flight(cls, devices: int, *, depth: int, max_skew: int) -> int:
        """How many items may be out at once (queued or running)."""
        return devices * depth

    @classmethod
    def describe(cls, total: int, devices: int, *, depth: int, max_skew: int) -> list[str]:
        """The lines under the assignment table that explain how this mode releases work."""
        raise NotImplementedError

    @classmethod
    def settings_text(cls, *, max_skew: int) -> str:
        """What the banner adds after the mode's name."""
        return ""

    def start(self) -> list[Assignment]:
        raise NotImplementedError

    def done(self, ordinal: int) -> list[Assignment]:
        raise NotImplementedError

    @property
    def complete(self) -> bool:
        return self.finished >= self.n

    def due(self, outstanding: set[int]) -> list[int]:
        """Of the items out, those that should have finished by now if nothing progresses."""
        return sorted(outstanding)


def batch_count(n: int, size: int) -> int:
    return -(-n // size) if n else 0


def batch_size(n: int, size: int, batch: int) -> int:
    """Items in batch `batch` when n items are cut into batches of `size` (the last may be short)."""
    return max(0, min(size, n - batch * size))


class SyncPolicy(Policy):
    """One item per device per batch, item j of a batch on device j.

    With `lookahead` 0, batch k+1 is released when all of batch k is done.
    With lookahead L, batches up to k+L are already queued while batch k
    runs; the barrier itself is then held by the workers (see barrier.py),
    so a queued batch starts the moment the previous one is done.
    """

    mode = "sync"
    label = "[SYNC]"
    batched = True
    synchronised = True
    per_device_queues = True

    @classmethod
    def build(cls, n, queues, shared_queue, *, depth, max_skew, lookahead):
        return cls(n, queues, lookahead)

    @classmethod
    def in_flight(cls, devices, *, depth, max_skew):
        return devices

    @classmethod
    def describe(cls, total, devices, *, depth, max_skew):
        return ["Batch synchronization mode:", f"   - Total batches: {batch_count(total, devices)}",
                f"   - Batch size: {devices} (one task per device)"]

    def __init__(self, n: int, queues: list[str], lookahead: int = 0):
        super().__init__(n)
        self.queues = queues
        self.size = len(queues)
        self.batches = batch_count(n, self.size)
        self.lookahead = lookahead
        self.released = 0  # batches released so far
        self._left = [batch_size(n, self.size, k) for k in range(self.batches)]

    def batch_size(self, batch: int) -> int:
        return batch_size(self.n, self.size, batch)

    def _release(self, upto: int) -> list[Assignment]:
        out = []
        while self.released < min(upto, self.batches):
            k = self.released
            first = k * self.size
            out += [Assignment(o, self.queues[o - first], k) for o in range(first, min(first + self.size, self.n))]
            self.released += 1
        return out

    def start(self) -> list[Assignment]:
        return self._release(1 + self.lookahead)

    def due(self, outstanding: set[int]) -> list[int]:
        # Later batches wait behind the oldest one: only its items can be lost.
        if not outstanding:
            return []
        oldest = min(outstanding) // self.size
        return sorted(o for o in outstanding if o // self.size == oldest)

    def done(self, ordinal: int) -> list[Assignment]:
        self.finished += 1
        k = ordinal // self.size
        self._left[k] -= 1
        if self._left[k] == 0:
            return self._release(k + 2 + self.lookahead)
        return []


class NoSyncPolicy(Policy):
    """Item i to device i mod G, each device's queue kept topped up to `per_queue` tasks.

    Runs in the same order as submitting everything at once, without
    holding the whole run in Redis.
    """

    mode = "nosync"
    label = "[NO-SYNC]"
    per_device_queues = True

    @classmethod
    def build(cls, n, queues, shared_queue, *, depth, max_skew, lookahead):
        return cls(n, queues, per_queue=depth)

    @classmethod
    def describe(cls, total, devices, *, depth, max_skew):
        held = devices * depth
        return [f"No-sync mode: All {total} tasks submitted at once"
                + (f" (at most {held} held in Redis at a time)" if held < total else "")]

    def __init__(self, n: int, queues: list[str], per_queue: int):
        super().__init__(n)
        self.queues = queues
        self.per_queue = max(1, per_queue)
        g = len(queues)
        self.pending = [deque(range(q, n, g)) for q in range(g)]

    def _take(self, q: int, count: int) -> list[Assignment]:
        pending = self.pending[q]
        return [Assignment(pending.popleft(), self.queues[q]) for _ in range(min(count, len(pending)))]

    def start(self) -> list[Assignment]:
        return [a for q in range(len(self.queues)) for a in self._take(q, self.per_queue)]

    def done(self, ordinal: int) -> list[Assignment]:
        self.finished += 1
        return self._take(ordinal % len(self.queues), 1)


class BalancedPolicy(Policy):
    """Everything through one shared queue; whichever device is free takes the next item."""

    mode = "balanced"
    label = "[BALANCED]"
    takes_back = True

    @classmethod
    def build(cls, n, queues, shared_queue, *, depth, max_skew, lookahead):
        return cls(n, shared_queue, in_flight=depth * len(queues))

    @classmethod
    def describe(cls, total, devices, *, depth, max_skew):
        return [f"Balanced mode: {total} tasks through the shared queue"]

    def __init__(self, n: int, shared_queue: str, in_flight: int):
        super().__init__(n)
        self.queue = shared_queue
        self.in_flight = max(1, in_flight)
        self.next = 0

    def _take(self, count: int) -> list[Assignment]:
        stop = min(self.n, self.next + count)
        out = [Assignment(o, self.queue) for o in range(self.next, stop)]
        self.next = stop
        return out

    def start(self) -> list[Assignment]:
        return self._take(self.in_flight)

    def done(self, ordinal: int) -> list[Assignment]:
        self.finished += 1
        return self._take(1)


class WindowPolicy(Policy):
    """Shared queue, in order, but item i is released only while i - oldest_unfinished < (K+1) x G.

    The span from the oldest unfinished item to the newest started one then
    stays under K+1 batches, and every item before the oldest unfinished one
    is done: a resume cursor without a full stop at each batch.
    """

    mode = "window"
    label = "[WINDOW]"
    batched = True
    skew_bounded = True
    takes_back = True

    @classmethod
    def build(cls, n, queues, shared_queue, *, depth, max_skew, lookahead):
        return cls(n, shared_queue, len(queues), max_skew)

    @classmethod
    def in_flight(cls, devices, *, depth, max_skew):
        return (max_skew + 1) * devices

    @classmethod
    def describe(cls, total, devices, *, depth, max_skew):
        return [f"Window mode: {batch_count(total, devices)} batches of {devices}, "
                f"at most {cls.in_flight(devices, depth=depth, max_skew=max_skew)} items from the oldest "
                "unfinished one"]

    @classmethod
    def settings_text(cls, *, max_skew):
        return f", max_skew={max_skew}"

    def __init__(self, n: int, shared_queue: str, devices: int, max_skew: int):
        super().__init__(n)
        self.queue = shared_queue
        self.size = devices
        self.limit = (max_skew + 1) * devices
        self.next = 0
        self.oldest = 0  # oldest unfinished ordinal
        self._done = bytearray(n)

    def _take(self) -> list[Assignment]:
        stop = min(self.n, self.oldest + self.limit)
        out = [Assignment(o, self.queue, o // self.size) for o in range(self.next, stop)]
        self.next = max(self.next, stop)
        return out

    def start(self) -> list[Assignment]:
        return self._take()

    def done(self, ordinal: int) -> list[Assignment]:
        self.finished += 1
        self._done[ordinal] = 1
        while self.oldest < self.n and self._done[self.oldest]:
            self.oldest += 1
        return self._take()


POLICIES: dict[str, type[Policy]] = {cls.mode: cls for cls in (SyncPolicy, NoSyncPolicy, BalancedPolicy,
                                                                   WindowPolicy)}
MODES = tuple(POLICIES)


def policy_class(mode: str | None) -> type[Policy]:
    """The class of `mode`, whose attributes are the mode's facts."""
    try:
        return POLICIES[str(mode)]
    except KeyError:
        raise ValueError(f"unknown mode {mode!r} (known: {', '.join(MODES)})") from None


def queue_depth(devices: int, *, prefetch: int, max_in_flight: int = 4096) -> int:
    """Tasks kept queued per device in nosync and balanced mode: enough that no device waits for the
    producer (a worker's prefetch plus one), and no more, so the producer never floods Redis or the CPU."""
    return max(1, min(prefetch + 1, -(-max_in_flight // max(1, devices))))


def make_policy(mode: str, n: int, queues: list[str], shared_queue: str, *, max_skew: int = 1,
                max_in_flight: int = 4096, lookahead: int = 0, depth: int = 2) -> Policy:
    """Build the policy of `mode` over `n` items on the devices of `queues`."""
    depth = max(1, min(depth, -(-max_in_flight // len(queues))))
    return policy_class(mode).build(n, queues, shared_queue, depth=depth, max_skew=max_skew, lookahead=lookahead)
