"""The `editbatch.edit` Celery task: decode the payload, run the adapter, record the result."""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path

from celery import shared_task
from celery.utils.log import get_task_logger

from .. import keys, ledger, redisconn
from ..barrier import BatchBarrier
from ..imageio import load_rgb, save_png
from ..leases import Lease
from ..models import identity
from ..models.base import EditRequest
from ..report.thumbnails import write_item_thumbnails
from ..workers import runtime
from ..workers.roots import confine
from .contract import TASK_NAME, EditTask
from .failures import ItemFailed, fail_task_if_failed

log = get_task_logger("editbatch.task")

CLAIM_POLL_S = 0.5
STOP_POLL_S = 0.5
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
    _redirect_if_other_model(self, task, rt)
    if rt.guard is not None and rt.guard.retiring:
        # Taken in the moment before this worker stopped consuming: back to the queue, untouched.
        raise self.retry(queue=(self.request.delivery_info or {}).get("routing_key"), countdown=0, max_retries=None)
    result = {"id": task.id, "index": task.index, "batch": task.batch, "seed": task.seed,
              "submitted_at": task.submitted_at, **rt.identity,
              "status": "failed", "output": None, "error": None, "info": {}, "work_s": None,
              "started_at": None, "finished_at": None}
    try:
        _wait_for_previous_batch(task, rt)
        _run(task, rt, result)
    except Exception as exc:  # noqa: BLE001 - one bad item must not stop the worker
        result["error"] = f"{exc.__class__.__name__}: {exc}"
        result["traceback"] = traceback.format_exc(limit=6)
        if result["started_at"] is None:
            result["started_at"] = result["finished_at"] = time.time()
    finally:
        if task.arrive_at:
            barrier = _barrier(task.arrive_at, rt)
            runtime.keep_retrying(lambda: barrier.arrive(rt.redis))
    if rt.guard is not None and rt.guard.task_finished(result["error"]):
        _stop_consuming(self)
    if result.get("reused"):
        log.info("%s: %s already done (%s): reused, not computed", rt.device.queue, task.id, result["output"])
    elif result["status"] == "ok":
        log.info("%s: %s ok in %.2fs -> %s", rt.device.queue, task.id,
                 result["finished_at"] - result["started_at"], result["output"])
    else:
        log.warning("%s: %s failed: %s\n%s", rt.device.queue, task.id, result["error"], result.get("traceback", ""))
    result["reported_at"] = time.time()
    if task.report:
        rt.report(task.report, result)
    return fail_task_if_failed(result)  # after reporting: Flower shows a failed item as FAILURE


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
        return  # ours, or redirected too often: `_check_model` fails the item with the reason
    came_from = (celery_task.request.delivery_info or {}).get("routing_key") or ""
    complete = isinstance(task.model, dict) and set(identity.FIELDS) <= set(task.model)
    to_shared = complete and came_from.startswith("shared")
    queue = identity.shared_queue(task.model) if to_shared else came_from or None
    log.info("%s: %s asks for %s, this worker holds %s: sent on to %s", rt.device.queue, task.id,
             identity.describe(task.model), identity.describe(rt.loaded), queue)
    raise celery_task.retry(queue=queue, countdown=0 if to_shared else REDIRECT_PAUSE_S, max_retries=MAX_REDIRECTS)


def _barrier(data: dict, rt: "runtime.WorkerRuntime") -> BatchBarrier:
    barrier = BatchBarrier.from_dict(data)
    rt.check_key(barrier.prefix)
    return barrier


def _wait_for_previous_batch(task: EditTask, rt: "runtime.WorkerRuntime") -> None:
    if not task.wait_for:
        return
    timeout = task.wait_timeout_s or 3600.0
    if not _barrier(task.wait_for, rt).wait(rt.redis, timeout, stop=lambda: rt.run_ended(task.run)):
        if rt.run_ended(task.run):
            raise RuntimeError(f"run {task.run} ended while this item waited for batch {task.wait_for['batch']}")
        raise TimeoutError(f"batch {task.wait_for['batch']} did not finish within {timeout:g}s; not started")


def _run(task: EditTask, rt: "runtime.WorkerRuntime", result: dict) -> None:
    _check_model(task, rt)
    relative = ledger.image_relpath(task.id)
    target = Path(task.output_dir) / relative
    confine(task.images, target, rt.roots)
    rt.roots.check_output(ledger.record_path(task.output_dir, task.id))
    claim = _claim(task, rt)
    if isinstance(claim, dict):  # finished before (an earlier run, or another copy of this task)
        _reuse(claim, result)
        return
    try:
        model = rt.model
        images = [load_rgb(p, rt.max_pixels) for p in task.images] if model.reads_images else []
        params = {**rt.model_config.params, **task.params}
        request = EditRequest(task.id, images, task.instruction, task.seed, params,
                              should_stop=_stop_check(task, rt))
        if task.report:
            rt.event(task.report, "started", task.index)
        if rt.guard is not None:
            rt.guard.task_started(task.id, task.timeout_s)
        result["started_at"] = time.time()
        try:
            out = model.edit(request)
        finally:
            result["finished_at"] = time.time()
        save_png(out.image, target)
        # The report's thumbnails, from the images in memory: a report of thousands of items then decodes none.
        write_item_thumbnails(task.output_dir, target, out.image, zip(task.images, images))
        info = dict(out.info)
        result.update(status="ok", output=relative, work_s=info.pop("work_s", None), info=info)
        ledger.write_record(task.output_dir, {**result, "model": task.model, "run": task.run})
    finally:
        claim.release()


def _check_model(task: EditTask, rt: "runtime.WorkerRuntime") -> None:
    if not identity.matches(task.model, rt.loaded):
        raise RuntimeError(f"this worker serves {identity.describe(rt.loaded)}, the task asks for "
                           f"{identity.describe(task.model)} ({identity.difference(task.model, rt.loaded)})")


def _claim(task: EditTask, rt: "runtime.WorkerRuntime") -> Lease | dict:
    """Hold the item's claim, or return its record if it is already done.

    Two copies of one item (a resumed run and a task of the killed run it
    replaces, or a redelivered message) never compute at the same time: the
    second waits for the first and then reuses its record.
    """
    key = keys.item_claim(rt.cluster.namespace, os.path.realpath(task.output_dir), task.id)
    lease = Lease(rt.redis, key, f"{rt.device.queue}|{rt.pid}|{task.run}|{task.index}", keys.CLAIM_TTL_S)
    deadline = time.monotonic() + (task.wait_timeout_s or 3600.0)
    while True:
        done = ledger.done_record(task.output_dir, task.id, seed=task.seed, model=task.model)
        if done is not None:
            return done
        if runtime.keep_retrying(lease.try_take):
            done = ledger.done_record(task.output_dir, task.id, seed=task.seed, model=task.model)
            if done is None:
                return lease
            lease.release()  # finished between our look and our claim
            return done
        if rt.run_ended(task.run):
            raise RuntimeError(f"run {task.run} ended while another worker held this item")
        _free_if_holder_gone(lease, rt)
        if time.monotonic() > deadline:
            raise TimeoutError(f"another worker held this item for over {task.wait_timeout_s or 3600.0:g}s")
        time.sleep(CLAIM_POLL_S)


def _free_if_holder_gone(lease: Lease, rt: "runtime.WorkerRuntime") -> None:
    """A claim whose worker died is freed at once rather than after its lease runs out."""
    holder = runtime.keep_retrying(lease.holder)
    if not holder:
        return
    queue, _, rest = holder.decode(errors="replace").partition("|")
    pid = rest.partition("|")[0]
    record = runtime.keep_retrying(lambda: rt.redis.get(keys.worker(rt.cluster.namespace, queue)))
    if record is None or str(json.loads(record).get("pid")) != pid:
        Lease(rt.redis, lease.key, holder.decode(errors="replace"), lease.ttl_s).release()


def _reuse(record: dict, result: dict) -> None:
    # The item as it was computed: by whom and when (its times are not this task's).
    for key in ("status", "output", "started_at", "finished_at", "work_s", "info", "device", "worker", "host", "pid"):
        result[key] = record.get(key)
    result["reused"] = True
    result["computed_in_run"] = record.get("run")


def _stop_check(task: EditTask, rt: "runtime.WorkerRuntime"):
    """`should_stop` for the adapter: asks Redis at most every STOP_POLL_S seconds."""
    state = {"at": 0.0, "stop": False}

    def should_stop() -> bool:
        now = time.monotonic()
        if not state["stop"] and now - state["at"] >= STOP_POLL_S:
            state["at"] = now
            try:
                state["stop"] = rt.run_ended(task.run)
            except redisconn.TRANSIENT:
                pass  # keep editing; asked again on a later step
        return state["stop"]

    return should_stop
