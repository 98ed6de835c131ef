"""The dispatch loop shared by every mode: release, wait for results, release more.

The policy decides what to release; this loop only moves messages and
keeps track of where each item is. Workers tell it when a message reaches
them ("held") and when its edit starts ("started"); every couple of seconds
it compares that with what `liveness` says of the workers and with the
queues in Redis (see watch.py). An item whose worker is gone, or that is nowhere (its
message or result lost in a Redis restart), is settled at once: reused from
its worker record when it finished, otherwise handed back as lost, to be
sent again in the run's next round. The task timeout stays as the last
guard: when no result arrives for `task_timeout_s`, the items that should
have finished are failed as lost. In shared-queue modes with prefetch, a
task held (not started) by a busy device moves to a device that went idle
(see take_back.py).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from .. import liveness, redisconn
from ..errors import RunCancelled
from ..scheduling import Assignment, Policy
from .inbox import ResultInbox
from .submit import Submitter
from .take_back import TakeBack
from .watch import RunWatch

OnResult = Callable[[int, dict[str, Any]], None]
CHECK_EVERY_S = 2.0
CONFIRMATIONS = 2  # an item must look lost in this many checks in a row (a result may be in flight)


class Dispatcher:
    def __init__(self, policy: Policy, submitter: Submitter, inbox: ResultInbox, *, index_of: list[int],
                 task_timeout_s: float, on_result: OnResult, device_queues: list[str],
                 watch: RunWatch | None = None, should_stop: Callable[[], bool] | None = None,
                 on_device_lost: Callable[[str, int], None] | None = None,
                 on_check: Callable[[], None] | None = None, take_back: TakeBack | None = None,
                 poll_s: float = 1.0):
        self.policy = policy
        self.submitter = submitter
        self.inbox = inbox
        self.index_of = index_of
        self.ordinal_of = {index: ordinal for ordinal, index in enumerate(index_of)}
        self.task_timeout_s = task_timeout_s
        self.on_result = on_result
        self.device_queues = set(device_queues)
        self.watch = watch
        self.should_stop = should_stop
        self.on_device_lost = on_device_lost
        self.on_check = on_check
        self.take_back = take_back
        self.poll_s = poll_s
        self.outstanding: dict[int, Assignment] = {}
        self.dead: dict[str, str] = {}  # device queue -> why its items fail
        self.revivable: set[str] = set()  # written off because its worker was gone: back when a worker serves
        self.seen: dict[str, liveness.Seen] = {}  # the workers at the last check
        self.vantage = liveness.Vantage()
        self.held_by: dict[int, tuple[str, int | None]] = {}  # ordinal -> (device, worker pid) holding it
        self.pids: dict[str, int] = {}  # device -> pid of the worker serving it now
        self.started: set[int] = set()
        self.suspects: dict[int, int] = {}  # ordinal -> checks in a row in which it looked lost
        self.as_group = policy.synchronised  # one Celery group per batch

    # ------------------------------------------------------------ moving messages

    def _release(self, assignments: list[Assignment]) -> list[Assignment]:
        """Send what the policy released; return what lands on written-off devices (settled next turn)."""
        live = [a for a in assignments if a.queue not in self.dead]
        self.outstanding.update((a.ordinal, a) for a in assignments)
        self.submitter.send(live, as_group=self.as_group)
        return [a for a in assignments if a.queue in self.dead]

    def _finish(self, ordinal: int, result: dict[str, Any]) -> list[Assignment]:
        self.outstanding.pop(ordinal, None)
        self.suspects.pop(ordinal, None)
        if self.take_back is not None:
            self.take_back.finished(result)
        self.on_result(ordinal, result)
        return self.policy.done(ordinal)

    def _lose(self, ordinals: list[int], error: str) -> list[Assignment]:
        released = []
        for o in ordinals:
            if o in self.outstanding:
                released += self._finish(o, lost_result(self.outstanding[o].batch, error, started=o in self.started))
        return released

    def _settle(self, ordinal: int, why: str) -> list[Assignment]:
        """An item that is nowhere: finished (its record says so) or lost."""
        record = self.watch.done_record(self.index_of[ordinal]) if self.watch else None
        if record is not None:
            return self._finish(ordinal, {**record, "index": self.index_of[ordinal],
                                          "batch": self.outstanding[ordinal].batch})
        return self._lose([ordinal], why)

    def _note(self, event: dict[str, Any]) -> None:
        ordinal = self.ordinal_of.get(event.get("index"))
        device = str(event.get("device"))
        if ordinal in self.outstanding:
            if self.take_back is not None and self.take_back.stale(ordinal, device):
                return
            self.held_by[ordinal] = (device, event.get("pid"))
            if event.get("event") == "started":
                self.started.add(ordinal)
                if self.take_back is not None:
                    self.take_back.started(device)

    def _move_held(self) -> None:
        """Send tasks held but not started by busy devices to idle ones (taken back from their holders)."""
        holder = {o: self.held_by.get(o, (None, None))[0] for o in self.outstanding}
        if not holder or None in holder.values():
            return  # a message still waits in a queue: an idle device takes that first
        idle = sorted(self.device_queues - set(holder.values()) - set(self.dead))
        if not idle:
            return
        waiting = {o: d for o, d in holder.items() if o not in self.started and d not in self.dead}
        running = {holder[o] for o in self.started if o in holder}
        for ordinal, to in self.take_back.choose(idle, waiting, running):
            try:
                if not self.take_back.take(ordinal, waiting[ordinal], to):
                    continue
            except redisconn.TRANSIENT:
                return  # Redis away for a while: the holder runs it (or, had our mark landed, the timeout guard)
            moved = Assignment(ordinal, to, self.outstanding[ordinal].batch)
            self.outstanding[ordinal] = moved
            self.held_by.pop(ordinal, None)
            self.suspects.pop(ordinal, None)
            self.submitter.send([moved])

    # ------------------------------------------------------------ where is everything

    def _write_off(self, queue: str, why: str, *, revivable: bool = False) -> None:
        if queue in self.device_queues and queue not in self.dead:
            self.dead[queue] = why
            if revivable:
                self.revivable.add(queue)
            if self.watch is not None:
                try:
                    self.watch.drop_queued(queue)  # a restarted worker must not run them too
                except redisconn.TRANSIENT:
                    pass
            if self.on_device_lost:
                self.on_device_lost(queue, len(self.device_queues) - len(self.dead))

    def _revive(self, queue: str) -> None:
        """A written-off device whose worker was started again and loaded: send to it again."""
        del self.dead[queue]
        self.revivable.discard(queue)
        if self.on_device_lost:
            self.on_device_lost(queue, -(len(self.device_queues) - len(self.dead)))

    def _gone_holder(self, ordinal: int, a: Assignment) -> str | None:
        """Why the worker that holds (or would take) this item is gone, or None while it serves."""
        device, pid = self.held_by.get(ordinal, (None, None))
        if device is None:
            return self.dead.get(a.queue)
        if device in self.dead:
            return self.dead[device]
        seen = self.seen.get(device)
        return seen.gone(pid) if seen is not None else None

    def _check(self) -> list[Assignment]:
        """Settle the items of workers that are gone, and items that are nowhere."""
        if self.on_check:
            self.on_check()
        if self.watch is None:
            return []
        holders = {device for device, _ in self.held_by.values() if device}
        try:
            seen = self.watch.look(self.device_queues | holders)
            queued = self.watch.queued(self.device_queues)
        except redisconn.TRANSIENT:
            return []  # Redis away: nothing can be judged now
        if not self.vantage.looked():
            return []  # back after our own gap: the workers' records have not been written again yet
        self.seen = seen
        for queue in sorted(self.device_queues):
            seen = self.seen[queue]
            if not seen.serving:
                state = (seen.record or {}).get("state")
                self._write_off(queue, seen.gone() or f"{queue}: worker is gone (not serving: {state})",
                                revivable=True)
                continue
            if queue in self.revivable:
                self._revive(queue)
            elif self.pids.get(queue) not in (None, seen.pid) and self.on_device_lost:
                self.on_device_lost(queue, -(len(self.device_queues) - len(self.dead)))  # restarted between checks
            self.pids[queue] = seen.pid
        released = []
        for ordinal, a in list(self.outstanding.items()):
            gone = self._gone_holder(ordinal, a)
            if gone:
                released += self._settle(ordinal, gone)
                continue
            device = self.held_by.get(ordinal, (None, None))[0]
            index = self.index_of[ordinal]
            if device is not None:
                seen = self.seen.get(device)
                working = seen.working if seen is not None else set()
                looks_lost = ordinal in self.started and index not in working  # started, then the worker moved on
            else:
                looks_lost = index not in queued  # not held by anyone and not waiting in a queue
            self.suspects[ordinal] = self.suspects.get(ordinal, 0) + 1 if looks_lost else 0
            if self.suspects[ordinal] >= CONFIRMATIONS:
                released += self._settle(ordinal, "message or result lost (broker restart?): sent again")
        return released

    # ------------------------------------------------------------ the loop

    def run(self) -> None:
        pending = self._release(self.policy.start())
        last_progress = last_check = time.monotonic()
        while not self.policy.complete:
            if self.should_stop is not None and self.should_stop():
                raise RunCancelled("run cancelled (editbatch cancel); finished items are kept")
            released: list[Assignment] = []  # sent together: one publish round per drained set of results
            if pending:
                released += self._lose([a.ordinal for a in pending], "device written off before this item ran")
                pending = []
            waited = time.monotonic() - last_progress
            messages = self.inbox.get(timeout_s=min(self.poll_s, max(0.0, self.task_timeout_s - waited)))
            for message in messages:
                if "event" in message:
                    self._note(message)
                    continue
                ordinal = self.ordinal_of.get(message.get("index"))
                if message.get("superseded") and message.get("status") != "ok":
                    continue  # a late copy that lost its claim: the copy that replaced it reports the item
                if ordinal in self.outstanding:  # late copies of settled items are dropped
                    released += self._finish(ordinal, message)
                    last_progress = time.monotonic()
            if not messages and time.monotonic() - last_progress >= self.task_timeout_s:
                due = self.policy.due(set(self.outstanding))
                # The device is still busy with the lost task, or dead: what is queued for it would wait too.
                for queue in {self.outstanding[o].queue for o in due} & self.device_queues:
                    self._write_off(queue, f"{queue}: lost an earlier task (stuck or gone)")
                released += self._lose(due, f"no result within task_timeout_s={self.task_timeout_s:g}s "
                                            "(worker lost, stuck or gone)")
                last_progress = time.monotonic()
            if time.monotonic() - last_check >= CHECK_EVERY_S:
                last_check = time.monotonic()
                released += self._check()
            pending = self._release(released)
            if messages and self.take_back is not None:
                self._move_held()


def lost_result(batch: int | None, error: str, *, started: bool = True) -> dict[str, Any]:
    """A synthesised result for an item that never reported. `started`: its edit had begun (an attempt)."""
    return {"status": "failed", "lost": True, "started": started, "batch": batch, "started_at": None,
            "finished_at": None, "error": error}
