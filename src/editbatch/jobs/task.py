"""The `editbatch.job` Celery task: hand the job to this process's coordinator (see jobs/contract.py)."""

from __future__ import annotations

from celery import shared_task

from .contract import TASK_NAME, VERSION, JobFailed


@shared_task(name=TASK_NAME, bind=True, acks_late=True, throws=(JobFailed,))
def job(self, config=None, priority: int = 0, v: int = VERSION) -> dict:
    from .coordinator import current

    return current().run_job(self, self.request.id, config, priority, v)
