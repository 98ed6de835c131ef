"""The `editbatch.edit` Celery task: decode the payload, run the adapter, record the result."""

from __future__ import annotations

import time
import traceback
from pathlib import Path

from celery import shared_task
from celery.utils.log import get_task_logger

from ..barrier import BatchBarrier
from ..dataset import output_name
from ..imageio import load_rgb, save_png
from ..models.base import EditRequest
from ..workers import runtime
from .contract import TASK_NAME, EditTask
from .failures import ItemFailed, fail_task_if_failed

log = get_task_logger("editbatch.task")


@shared_task(name=TASK_NAME, acks_late=True, throws=(ItemFailed,))
def edit(payload: dict) -> dict:
    task = EditTask.from_payload(payload)
    rt = runtime.current()
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
            _barrier(task.arrive_at, rt).arrive(rt.redis)
    if result["status"] == "ok":
        log.info("%s: %s ok in %.2fs -> %s", rt.device.queue, task.id,
                 result["finished_at"] - result["started_at"], result["output"])
    else:
        log.warning("%s: %s failed: %s\n%s", rt.device.queue, task.id, result["error"], result.get("traceback", ""))
    result["reported_at"] = time.time()
    if task.report:
        rt.report(task.report, result)
    return fail_task_if_failed(result)  # after reporting: Flower shows a failed item as FAILURE


def _barrier(data: dict, rt: "runtime.WorkerRuntime") -> BatchBarrier:
    barrier = BatchBarrier.from_dict(data)
    rt.check_key(barrier.prefix)
    return barrier


def _wait_for_previous_batch(task: EditTask, rt: "runtime.WorkerRuntime") -> None:
    if not task.wait_for:
        return
    timeout = task.wait_timeout_s or 3600.0
    if not _barrier(task.wait_for, rt).wait(rt.redis, timeout):
        raise TimeoutError(f"batch {task.wait_for['batch']} did not finish within {timeout:g}s; not started")


def _run(task: EditTask, rt: "runtime.WorkerRuntime", result: dict) -> None:
    wanted = task.model or {}
    loaded = rt.model_config
    if wanted and (wanted.get("type") != loaded.type or wanted.get("path", loaded.path) != loaded.path):
        raise RuntimeError(f"this worker serves {loaded.type} ({loaded.path}), the task asks for "
                           f"{wanted.get('type')} ({wanted.get('path')})")
    model = rt.model
    images = [load_rgb(p) for p in task.images] if model.reads_images else []
    params = {**loaded.params, **task.params}
    request = EditRequest(task.id, images, task.instruction, task.seed, params)
    result["started_at"] = time.time()
    try:
        out = model.edit(request)
    finally:
        result["finished_at"] = time.time()
    relative = f"images/{output_name(task.id)}"
    save_png(out.image, Path(task.output_dir) / relative)
    info = dict(out.info)
    result.update(status="ok", output=relative, work_s=info.pop("work_s", None), info=info)
