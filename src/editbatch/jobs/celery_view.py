"""What Celery clients and Flower see of a job: task events and the task's result, written by the coordinator.

The `editbatch.job` task only queues the job and returns without a result
(see task.py), so no Celery message is held while the job waits or runs.
The coordinator then speaks for the task under the same id: `task-progress`
events while the job runs (Flower shows PROGRESS with the counts), and when
it ends the task's result in the result backend (what `AsyncResult.get()`
and Flower's `/api/task/result` read) plus a `task-succeeded` or
`task-failed` event. Results are written for every job, whoever submitted
it; events only for jobs that came through Celery, which Flower knows.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from celery import states

from .. import redisconn
from .contract import JobFailed

log = logging.getLogger("editbatch.jobs")

RESULT_RETRY_S = 120.0  # the result is the last word of a job: ride out a Redis restart for it
EVENT_RETRY = {"max_retries": 30, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 2.0}


class CeleryView:
    def __init__(self, app, queue: str, *, events: bool):
        self.app = app
        self.hostname = f"{queue}@{socket.gethostname()}"  # the coordinator's Celery worker
        self.events = events

    def progress(self, record: dict[str, Any], counts: dict[str, Any]) -> None:
        """Best effort: a lost event is replaced by the next one.

        Flower's task page and `/api/task/info` show only Celery's own task fields, so the counts also go
        in `result` as one line (the other fields are stored by Flower but shown nowhere).
        """
        if self._shows(record):
            self._send("task-progress", record["id"], retry=False, result=progress_line(counts), **counts)

    def ended(self, record: dict[str, Any]) -> None:
        """Store the task's result (summary, or JobFailed with the reason) and tell Flower."""
        job_id = record["id"]
        started = record.get("started_at") or record.get("submitted_at") or time.time()
        runtime = max(0.0, (record.get("finished_at") or time.time()) - started)
        try:
            result, state = outcome(record), states.SUCCESS
        except JobFailed as exc:
            # A cancelled job is REVOKED (Flower's word for it); `AsyncResult.get()` raises JobFailed for both.
            result, state = exc, states.REVOKED if record["state"] == "cancelled" else states.FAILURE
        redisconn.retrying(lambda: self.app.backend.store_result(job_id, result, state), RESULT_RETRY_S)
        if not self._shows(record):
            return
        if state == states.SUCCESS:
            self._send("task-succeeded", job_id, retry=True, result=repr(result), runtime=runtime)
        elif state == states.REVOKED:
            self._send("task-revoked", job_id, retry=True, terminated=False, signum=None, expired=False,
                       result=str(result))
        else:
            self._send("task-failed", job_id, retry=True, exception=str(result), traceback="", runtime=runtime)

    def _shows(self, record: dict[str, Any]) -> bool:
        return self.events and record.get("via") == "celery"

    def _send(self, event: str, job_id: str, *, retry: bool, **fields: Any) -> None:
        try:
            with self.app.events.default_dispatcher(hostname=self.hostname) as dispatcher:
                dispatcher.send(event, uuid=job_id, retry=retry, retry_policy=EVENT_RETRY, **fields)
        except Exception:  # noqa: BLE001 - Flower's view is best effort; the job record is the truth
            log.warning("job %s: %s event not sent", job_id, event, exc_info=True)


def progress_line(counts: dict[str, Any]) -> str:
    """`running: 5/12 done: 4 ok, 1 failed, 0 invalid, 0 not run, 7 pending`."""
    total, pending = counts.get("total", 0), counts.get("pending", 0)
    said = ", ".join(f"{counts.get(k, 0)} {k.replace('_', ' ')}" for k in ("ok", "failed", "invalid", "not_run"))
    return f"running: {total - pending}/{total} done: {said}, {pending} pending"


def outcome(record: dict[str, Any] | None) -> dict[str, Any]:
    """The task's result for a finished job: its summary, or JobFailed with the reason."""
    if record is None:
        raise JobFailed("job record vanished")
    if record["state"] == "done":
        return {**(record.get("summary") or {}), "job": record["id"], "output_dir": record.get("output_dir"),
                "state": "done"}
    raise JobFailed(record.get("error") or f"job {record['state']}", record["state"])
