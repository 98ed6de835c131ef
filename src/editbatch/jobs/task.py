"""The `editbatch.job` Celery task: a front door to the job store (see jobs/contract.py).

It queues the job (or finds it, same id) and returns at once, so no job is
a Celery message held while it waits or runs. It stores no result of its
own: the coordinator writes the task's result when the job ends (see
celery_view.py), or here already for a job that had ended before.
"""

from __future__ import annotations

from celery import shared_task
from celery.exceptions import Ignore

from .contract import TASK_NAME, VERSION, JobFailed


@shared_task(name=TASK_NAME, bind=True, acks_late=True, throws=(JobFailed,))
def job(self, config=None, priority: int = 0, v: int = VERSION) -> dict:
    from .coordinator import current

    ended = current().accept(self.request.id, config, priority, v)
    if ended is not None:
        return ended
    raise Ignore()
