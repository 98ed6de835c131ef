"""What Celery clients and Flower see of a job: task events and the task's result, written by the coordinator.

The `editbatch.job` task only queues the job and returns without a result
(see task.py), so no Celery message is held while the job waits or runs.
The coordinator then speaks for the task under the same id: `task-progress`
events while the job runs (Flower shows PROGRESS with the counts), and when
it ends the task's result in the result backend (what `AsyncResult.get()`
and Flower's `/api/task/result` read) plus a `task-succeeded` or
`task-failed` event, or `task-revoked` for a cancelled job. Results and
events are written for every job, whoever submitted it: for a job queued by
`editbatch submit` or the Python client, which sent no Celery message, the
coordinator also sends the `task-received` (when it accepts the job) and
`task-started` (when it runs) that a Celery worker would have sent, so
Flower lists it like the others. With `cluster.task_events: false` no
event is sent.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from celery import states

from .. import redisconn
from .contract import TASK_NAME, JobFailed

log = logging.getLogger("editbatch.jobs")

RESULT_RETRY_S = 120.0  # the result is the last word of a job: ride out a Redis restart for it
EVENT_RETRY = {"max_retries": 30, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 2.0}


class CeleryView:
    def __init__(self, app, queue: str, *, events: bool):
        self.app = app
        self.hostname = f"{queue}@{socket.gethostname()}"  # the coordinator's Celery worker
        self.events = events

    def accepted(self, record: dict[str, Any]) -> None:
        """A job that came without a Celery message: tell Flower about it as a received task."""
        if self.events and record.get("via") != "celery":
            config = record.get("config") or {}
            self._send("task-received", record["id"], retry=False, name=TASK_NAME, args="()",
                       kwargs=f"config={config.get('name', '-')} output_dir={record.get('output_dir')} "
                              f"via={record.get('via')}", root_id=record["id"], parent_id=None, retries=0,
                       eta=None, expires=None)

    def started(self, record: dict[str, Any]) -> None:
        if self.events and record.get("via") != "celery":
            self._send("task-started", record["id"], retry=False)

    def progress(self, record: dict[str, Any], counts: dict[str, Any]) -> None:
        """Best effort: a lost event is replaced by the next one.

        Flower's task page and `/api/task/info` show only Celery's own task fields, so the counts go in
        `result` as one line, and as a mapping in `counts` (stored by Flower, shown nowhere). Never as
        fields of their own: `failed` is Celery's failure timestamp.
        """
        if self.events:
            self._send("task-progress", record["id"], retry=False, result=progress_line(counts), counts=counts)

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
        if not self.events:
            return
        if state == states.SUCCESS:
            self._send("task-succeeded", job_id, retry=True, result=repr(result), runtime=runtime)
        elif state == states.REVOKED:
            # Celery's event state ranks a custom state (PROGRESS) after REVOKED and would keep PROGRESS;
            # a `state` field in the event is applied all the same, so the job reads REVOKED.
            self._send("task-revoked", job_id, retry=True, terminated=False, signum=None, expired=False,
                       result=str(result), state=states.REVOKED)
        else:
            self._send("task-failed", job_id, retry=True, exception=str(result), traceback="", runtime=runtime)

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
