"""The dispatch loop shared by every mode: release, wait for results, release more.

The policy decides what to release; this loop only moves messages. Every
wait has a timeout: when no result arrives for `task_timeout_s`, the
outstanding items are failed as lost, so a lost task never hangs the run.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from ..scheduling import Policy
from .inbox import ResultInbox
from .submit import Submitter

OnResult = Callable[[int, dict[str, Any]], None]


class Dispatcher:
    def __init__(self, policy: Policy, submitter: Submitter, inbox: ResultInbox, *, index_of: list[int],
                 task_timeout_s: float, on_result: OnResult, poll_s: float = 1.0):
        self.policy = policy
        self.submitter = submitter
        self.inbox = inbox
        self.ordinal_of = {index: ordinal for ordinal, index in enumerate(index_of)}
        self.task_timeout_s = task_timeout_s
        self.on_result = on_result
        self.poll_s = poll_s
        self.outstanding: set[int] = set()
        self.batch_of: dict[int, int | None] = {}
        self.as_group = policy.mode == "sync"

    def _release(self, assignments) -> None:
        self.outstanding.update(a.ordinal for a in assignments)
        self.batch_of.update((a.ordinal, a.batch) for a in assignments)
        self.submitter.send(assignments, as_group=self.as_group)

    def _finish(self, ordinal: int, result: dict[str, Any]) -> list:
        self.outstanding.discard(ordinal)
        self.on_result(ordinal, result)
        return self.policy.done(ordinal)

    def run(self) -> None:
        self._release(self.policy.start())
        last_progress = time.monotonic()
        while not self.policy.complete:
            waited = time.monotonic() - last_progress
            results = self.inbox.get(timeout_s=min(self.poll_s, max(0.0, self.task_timeout_s - waited)))
            released = []  # sent together: one publish round per drained set of results
            for result in results:
                ordinal = self.ordinal_of.get(result.get("index"))
                if ordinal in self.outstanding:  # late copies of timed-out items are dropped
                    released += self._finish(ordinal, result)
                    last_progress = time.monotonic()
            if not results and time.monotonic() - last_progress >= self.task_timeout_s:
                for ordinal in self.policy.due(self.outstanding):
                    released += self._finish(ordinal, lost_result(ordinal, self.task_timeout_s,
                                                                  self.batch_of.get(ordinal)))
                last_progress = time.monotonic()
            self._release(released)


def lost_result(ordinal: int, timeout_s: float, batch: int | None = None) -> dict[str, Any]:
    return {"status": "failed", "lost": True, "batch": batch, "started_at": None, "finished_at": None,
            "error": f"no result within task_timeout_s={timeout_s:g}s (worker lost, stuck or gone)"}
