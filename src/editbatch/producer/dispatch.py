"""The dispatch loop shared by every mode: release, wait for results, release more.

The policy decides what to release; this loop only moves messages. Every
wait has a timeout: when no result arrives for `task_timeout_s`, the items
that should have finished are failed as lost, so a lost task never hangs
the run. A device that lost a task, or whose worker has vanished, is
written off: the items bound to it fail at once instead of one timeout at a
time (a stuck GPU in sync mode would otherwise cost a timeout per batch).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from ..errors import RunCancelled
from ..scheduling import Assignment, Policy
from .inbox import ResultInbox
from .submit import Submitter

OnResult = Callable[[int, dict[str, Any]], None]
GoneQueues = Callable[[set[str]], set[str]]  # of these device queues, which have no live worker
LIVENESS_EVERY_S = 5.0


class Dispatcher:
    def __init__(self, policy: Policy, submitter: Submitter, inbox: ResultInbox, *, index_of: list[int],
                 task_timeout_s: float, on_result: OnResult, device_queues: list[str],
                 gone: GoneQueues | None = None, should_stop: Callable[[], bool] | None = None,
                 poll_s: float = 1.0):
        self.policy = policy
        self.submitter = submitter
        self.inbox = inbox
        self.ordinal_of = {index: ordinal for ordinal, index in enumerate(index_of)}
        self.task_timeout_s = task_timeout_s
        self.on_result = on_result
        self.device_queues = set(device_queues)
        self.gone = gone
        self.should_stop = should_stop
        self.poll_s = poll_s
        self.outstanding: dict[int, Assignment] = {}
        self.dead: dict[str, str] = {}  # device queue -> why its items fail
        self.as_group = policy.mode == "sync"

    def _release(self, assignments: list[Assignment]) -> list[Assignment]:
        """Send what the policy released; return what lands on written-off devices (failed next round)."""
        live = [a for a in assignments if a.queue not in self.dead]
        self.outstanding.update((a.ordinal, a) for a in assignments)
        self.submitter.send(live, as_group=self.as_group)
        return [a for a in assignments if a.queue in self.dead]

    def _finish(self, ordinal: int, result: dict[str, Any]) -> list[Assignment]:
        self.outstanding.pop(ordinal, None)
        self.on_result(ordinal, result)
        return self.policy.done(ordinal)

    def _fail(self, assignments: list[Assignment], error: str | None = None) -> list[Assignment]:
        released = []
        for a in assignments:
            if a.ordinal in self.outstanding:
                released += self._finish(a.ordinal, lost_result(a.batch, error or self.dead[a.queue]))
        return released

    def _write_off(self, queues: set[str], why: str) -> list[Assignment]:
        """Mark device queues dead; return their outstanding items."""
        for q in queues & self.device_queues:
            self.dead.setdefault(q, why.format(queue=q))
        return [a for a in self.outstanding.values() if a.queue in self.dead]

    def _check_devices(self) -> list[Assignment]:
        waiting_on = {a.queue for a in self.outstanding.values() if a.queue in self.device_queues} - set(self.dead)
        newly_dead = self.gone(waiting_on) if self.gone and waiting_on else set()
        return self._write_off(newly_dead, "{queue}: worker is gone") if newly_dead else []

    def run(self) -> None:
        pending = self._release(self.policy.start())
        last_progress = last_check = time.monotonic()
        while not self.policy.complete:
            if self.should_stop is not None and self.should_stop():
                raise RunCancelled("run cancelled (editbatch cancel); finished items are kept")
            released: list[Assignment] = []  # sent together: one publish round per drained set of results
            if pending:
                released += self._fail(pending)
                pending = []
            waited = time.monotonic() - last_progress
            results = self.inbox.get(timeout_s=min(self.poll_s, max(0.0, self.task_timeout_s - waited)))
            for result in results:
                ordinal = self.ordinal_of.get(result.get("index"))
                if ordinal in self.outstanding:  # late copies of timed-out items are dropped
                    released += self._finish(ordinal, result)
                    last_progress = time.monotonic()
            if not results and time.monotonic() - last_progress >= self.task_timeout_s:
                due = [self.outstanding[o] for o in self.policy.due(set(self.outstanding))]
                released += self._fail(due, f"no result within task_timeout_s={self.task_timeout_s:g}s "
                                            "(worker lost, stuck or gone)")
                # The device is still busy with the lost task, or dead: what is queued for it would wait too.
                released += self._fail(self._write_off({a.queue for a in due},
                                                       "{queue}: lost an earlier task (stuck or gone)"))
                last_progress = time.monotonic()
            if time.monotonic() - last_check >= LIVENESS_EVERY_S:
                last_check = time.monotonic()
                released += self._fail(self._check_devices())
            pending = self._release(released)


def lost_result(batch: int | None, error: str) -> dict[str, Any]:
    return {"status": "failed", "lost": True, "batch": batch, "started_at": None, "finished_at": None,
            "error": error}
