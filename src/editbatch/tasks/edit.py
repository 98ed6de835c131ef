"""The `editbatch.edit` Celery task: a short chain of named steps around one item.

Send on a task for another model; give back a task taken while the worker
retires or shuts down; then the item's own steps (see steps.py: wait for
the previous batch; on the device, claim and compute; then write and
commit). A task of a run that is over, or a copy the producer took back
for an idle device (take_back.py), is skipped when it comes to claim its
item. Then tell the guard, send the item's hand-back (claim release,
barrier arrival, result to the producer's inbox: one script, see
handback.py), make the report's thumbnails, and log.
"""

from __future__ import annotations

from celery import shared_task
from celery.exceptions import Reject
from celery.utils.log import get_task_logger

from .. import clock
from ..models import identity
from ..workers import runtime
from ..workers.device_slot import GiveBack
from . import steps
from .contract import TASK_NAME, EditTask
from .failures import ItemFailed, Skipped, fail_task_if_failed
from .handback import HandBack

log = get_task_logger("editbatch.task")

# A task for another model is sent on instead of failed: to its model's shared queue, or back to its
# device queue after a pause (the worker may be switching models). Bounded, so it cannot circle forever.
MAX_REDIRECTS = 30
REDIRECT_PAUSE_S = 2.0


@shared_task(name=TASK_NAME, bind=True, acks_late=True, throws=(ItemFailed,))
def edit(self, payload: dict) -> dict:
    task = EditTask.from_payload(payload)
    rt = runtime.current()
    hand_back = HandBack()
    try:
        try:
            _redirect_if_other_model(self, task, rt)
            if rt.guard is not None and rt.guard.retiring:
                raise GiveBack("this worker is retiring")
            result = steps.process(task, rt, hand_back)
        except Skipped as skip:
            log.info("%s: %s skipped: %s", rt.device.queue, task.id, skip)
            return {"id": task.id, "index": task.index, "status": "skipped", "run": task.run,
                    **({"taken_back": True} if skip.taken_back else {})}
        except GiveBack as leaving:
            # Taken while this worker stopped taking work: back to its queue, untouched (no new message, no
            # publish that could wait on a Redis that is gone: the message itself is restored).
            log.info("%s: %s not started, back to its queue: %s", rt.device.queue, task.id, leaving)
            if rt.guard is not None and rt.guard.stop_consuming_now():
                _stop_consuming(self)  # before the message goes back, or this worker takes it again
            raise Reject(str(leaving), requeue=True) from None
        if rt.guard is not None and rt.guard.stop_consuming_now():
            _stop_consuming(self)
        result["reported_at"] = clock.now()
        result["clock_vs_redis_s"] = rt.clock_vs_redis()
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
    if rt.run_ended(task.run):
        raise Skipped(f"run {task.run} has ended")
    came_from = (celery_task.request.delivery_info or {}).get("routing_key") or ""
    complete = isinstance(task.model, dict) and set(identity.FIELDS) <= set(task.model)
    to_shared = complete and came_from.startswith("shared")
    queue = identity.shared_queue(task.model) if to_shared else came_from or None
    log.info("%s: %s asks for %s, this worker holds %s: sent on to %s", rt.device.queue, task.id,
             identity.describe(task.model), identity.describe(rt.loaded), queue)
    raise celery_task.retry(queue=queue, countdown=0 if to_shared else REDIRECT_PAUSE_S, max_retries=MAX_REDIRECTS)


