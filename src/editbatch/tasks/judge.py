"""The `editbatch.judge` Celery task: one item for the judge (contract in judge_contract.py).

Skip an item of a run that is over; tell the producer who holds the item;
check its paths against the worker's roots; then the judge (cache first,
ask, cache the final outcome) and report the record to the producer's inbox.
The cache is written before the report, so an item sent again after this
worker died is answered from the cache, never asked twice.
"""

from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING

from celery import shared_task
from celery.utils.log import get_task_logger

from .judge_contract import TASK_NAME, JudgeTask

if TYPE_CHECKING:
    from ..workers.judging import JudgeWorker

log = get_task_logger("editbatch.judge")


@shared_task(name=TASK_NAME, acks_late=True)
def judge(payload: dict) -> dict:
    # Imported here: every Celery app registers this task, and only judge workers need the judge's client (httpx).
    from ..workers import judging

    task = JudgeTask.from_payload(payload)
    worker = judging.current()
    mine = {"id": task.id, "worker": worker.name, "pid": worker.pid}
    if worker.run_ended(task.run):
        return {**mine, "status": "skipped"}
    if task.report:
        worker.tell(task.report, {"event": "started", **mine})
    try:
        record = _judge(task, worker)
    except InterruptedError:
        # Shutting down while waiting for the rate limit: not reported; the producer sends it again once
        # this worker's presence is gone.
        return {**mine, "status": "interrupted"}
    record.update(mine)
    log.info("%s: %s %s%s", worker.name, task.id, record["status"], " (cached)" if record.get("cached") else "")
    if task.report:
        worker.tell(task.report, record)
    return record


def _judge(task: JudgeTask, worker: "JudgeWorker") -> dict:
    from ..scores.cache import ScoreCache
    from ..scores.judge.stage import JudgeJob

    if task.queue != worker.stage.queue:
        return _error(f"asks judge queue {task.queue}; this worker serves {worker.stage.queue}")
    try:
        worker.confine(task.output, task.inputs, task.target, task.cache_dir)
        job = JudgeJob(task.id, task.instruction, Path(task.output), [Path(p) for p in task.inputs],
                       Path(task.target) if task.target else None, task.fields)
        return worker.stage.judge(job, ScoreCache(task.cache_dir))
    except InterruptedError:
        raise
    except Exception as exc:  # noqa: BLE001 - one item (an unreadable output, a path outside the roots) fails alone
        return _error(f"{exc.__class__.__name__}: {exc}")


def _error(message: str) -> dict:
    return {"status": "error", "scores": None, "reason": "", "raw": None, "error": message, "attempts": 0}
