"""The `editbatch.edit` Celery task: a short chain of named steps around one item.

Skip a task of a run that is over, and a copy the producer took back for an
idle device (take_back.py); send on a task for another model; hand back a
task taken while retiring; then the item's own steps (see steps.py: wait
for the previous batch, claim, compute, commit, thumbnail); then tell the
guard, send the item's hand-back (claim release, barrier arrival, result to
the producer's inbox: one script, see handback.py), and log.
"""

from __future__ import annotations

from celery import shared_task
from celery.utils.log import get_task_logger

from .. import clock
from ..models import identity
from ..workers import runtime
from . import steps, take_back
from .contract import TASK_NAME, EditTask
from .handback import HandBack
from .failures import ItemFailed, fail_task_if_failed

log = get_task_logger("editbatch.task")

# A task for another model is sent on instead of failed: to its model's shared queue, or back to its
# device queue after a pause (the worker may be switching models). Bounded, so it cannot circle forever.
MAX_REDIRECTS = 30
REDIRECT_PAUSE_S = 2.0


@shared_task(name=TASK_NAME, bind=True, acks_late=True, throws=(ItemFailed,))
def edit(self, payload: dict) -> dict:
    task = EditTask.from_payload(payload)
    rt = runtime.current()
    if rt.run_ended(task.run):
        log.info("%s: %s skipped: run %s has ended", rt.device.queue, task.id, task.run)
        return {"id": task.id, "index": task.index, "status": "skipped", "run": task.run}
    if take_back.taken_back(task, rt):
        log.info("%s: %s skipped: taken back for an idle device", rt.device.queue, task.id)
        return {"id": task.id, "index": task.index, "status": "skipped", "taken_back": True, "run": task.run}
    _redirect_if_other_model(self, task, rt)
    if rt.guard is not None and rt.guard.retiring:
        # Taken in the moment before this worker stopped consuming: back to the queue, untouched.
        raise self.retry(queue=(self.request.delivery_info or {}).get("routing_key"), countdown=0, max_retries=None)
    hand_back = HandBack()
    result = steps.process(task, rt, hand_back)
    if rt.guard is not None and rt.guard.task_finished(result["error"]):
        _stop_consuming(self)
    result["reported_at"] = clock.now()
    result["clock_vs_redis_s"] = rt.clock_vs_redis()
    try:
        if task.report:
            rt.check_key(task.report)
            hand_back.report(task.report, result)
    finally:
        steps.send(rt, hand_back)  # claim release, barrier arrival and result: one round trip
    _log(task, rt, result)
    return fail_task_if_failed(result)  # after reporting: Flower shows a failed item as FAILURE


def _log(task: EditTask, rt: "runtime.WorkerRuntime", result: dict) -> None:
    if result.get("reused"):
        how = "superseded by a later claim" if result.get("superseded") else "already done"
        log.info("%s: %s %s (%s): reused, not computed", rt.device.queue, task.id, how, result["output"])
    elif result["status"] == "ok":
        log.info("%s: %s ok in %.2fs -> %s", rt.device.queue, task.id,
                 result["finished_at"] - result["started_at"], result["output"])
    else:
        log.warning("%s: %s failed: %s\n%s", rt.device.queue, task.id, result["error"], result.get("traceback", ""))


def _stop_consuming(celery_task) -> None:
    """Cancel this worker's queues at once (a retiring worker must not take more items)."""
    hostname = celery_task.request.hostname
    for queue in list(celery_task.app.amqp.queues.consume_from or celery_task.app.amqp.queues):
        try:
            celery_task.app.control.cancel_consumer(queue, destination=[hostname])
        except Exception:  # noqa: BLE001 - the warm shutdown that follows stops it anyway
            pass


def _redirect_if_other_model(celery_task, task: EditTask, rt: "runtime.WorkerRuntime") -> None:
    if identity.matches(task.model, rt.loaded) or celery_task.request.retries >= MAX_REDIRECTS:
        return  # ours, or redirected too often: `steps.check_model` fails the item with the reason
    came_from = (celery_task.request.delivery_info or {}).get("routing_key") or ""
    complete = isinstance(task.model, dict) and set(identity.FIELDS) <= set(task.model)
    to_shared = complete and came_from.startswith("shared")
    queue = identity.shared_queue(task.model) if to_shared else came_from or None
    log.info("%s: %s asks for %s, this worker holds %s: sent on to %s", rt.device.queue, task.id,
             identity.describe(task.model), identity.describe(rt.loaded), queue)
    raise celery_task.retry(queue=queue, countdown=0 if to_shared else REDIRECT_PAUSE_S, max_retries=MAX_REDIRECTS)


