"""Sending `editbatch.edit` tasks: one message per item, a Celery group per sync batch."""

from __future__ import annotations

import time
from typing import Any, Callable

from celery import Celery, group

from ..scheduling import Assignment
from ..tasks.contract import TASK_NAME
from ..tasks.failures import task_args_repr

PayloadFor = Callable[[Assignment, float], dict[str, Any]]


class Submitter:
    def __init__(self, app: Celery, payload_for: PayloadFor):
        self.app = app
        self.payload_for = payload_for
        self.submitted_at: dict[int, float] = {}

    def connect(self) -> None:
        with self.app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=3)

    def send(self, assignments: list[Assignment], *, as_group: bool = False) -> None:
        if not assignments:
            return
        now = time.time()
        sigs = []
        for a in assignments:
            self.submitted_at[a.ordinal] = now
            # ignore_result: the result comes back through the run's inbox, so
            # Celery neither stores it nor subscribes to a channel per task.
            payload = self.payload_for(a, now)
            sigs.append(self.app.signature(TASK_NAME, args=[payload], queue=a.queue, ignore_result=True,
                                           argsrepr=task_args_repr(payload), kwargsrepr=""))
        if not as_group:
            with self.app.producer_or_acquire() as producer:
                for sig in sigs:
                    sig.apply_async(producer=producer)
            return
        # Sync mode: one group per batch (a release may hold several batches at the start).
        batches: dict[int | None, list] = {}
        for a, sig in zip(assignments, sigs):
            batches.setdefault(a.batch, []).append(sig)
        for members in batches.values():
            group(members).apply_async()
