"""The `editbatch.job` task contract: how any Celery client (or Flower's REST API) submits a whole run.

Send to the coordinator's queue (``jobs`` unless `jobs.queue` says otherwise)::

    app.send_task("editbatch.job", queue="jobs", task_id="my-job-1",   # task id = job id (optional)
                  kwargs={"config": {...}, "priority": 0, "v": 1})

Keyword arguments (version 1):

- ``config`` (required): a run config as a mapping, the schema of
  `editbatch run` files. Paths must be absolute (the coordinator has its own
  working folder) and lie under the coordinator's roots. Its ``cluster``
  section is ignored: the coordinator's cluster (broker, devices) runs it.
- ``priority`` (optional integer, default 0): higher runs first; equal
  priorities run in submission order.
- ``v`` (optional): the contract version, 1.

The task puts the job into the job store and returns at once, so no
message is held while the job waits or runs; the coordinator stores the
task's result under the job id when the job ends (`AsyncResult(id).get()`
waits for it). Result: the run's summary (the content of ``summary.json``)
plus ``job`` (the id), ``output_dir`` and ``state: done`` (SUCCESS, also
when some items failed: the summary counts them). A job that is refused or
fails ends FAILURE, a cancelled one REVOKED; for both, ``get()`` raises
`JobFailed` with a one-line message. Submitting the same task id twice runs the job once; both
read its result.
"""

from __future__ import annotations

from typing import Any

TASK_NAME = "editbatch.job"
VERSION = 1
DEFAULT_QUEUE = "jobs"


class JobFailed(Exception):
    """The job ended failed or cancelled; the message is the reason."""

    def __init__(self, message: str, state: str = "failed"):
        super().__init__(message)
        self.state = state

    def __reduce__(self):
        return (JobFailed, (self.args[0], self.state))


def check_kwargs(config: Any, priority: Any, v: Any) -> None:
    if v != VERSION:
        raise JobFailed(f"unsupported job contract version {v!r} (this coordinator speaks {VERSION})")
    if not isinstance(config, dict):
        raise JobFailed(f"'config' must be a mapping (a run config), got {type(config).__name__}")
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise JobFailed("'priority' must be an integer")
