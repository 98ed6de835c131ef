"""Model switches on warm workers, between jobs.

The coordinator sends the task `editbatch.switch_model` to each device
queue whose worker holds another model. The worker runs it between edits
(one task at a time): a change of LoRA alone swaps the adapter on the
loaded base; anything else unloads the model and loads the new one through
the same load slots as at start-up (`cluster.load_concurrency` at a time).
The worker then consumes the new model's shared queue instead of the old
one and publishes the new identity and load times in its presence record.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from celery import current_app, shared_task

from ..config import ModelConfig
from ..errors import ClusterError
from ..models import identity
from ..models.registry import get_model_class
from . import runtime
from .loading import LoadSlots
from .presence import read_workers

log = logging.getLogger("editbatch.worker")

TASK_NAME = "editbatch.switch_model"


@shared_task(name=TASK_NAME, acks_late=True)
def switch_model(model: dict[str, Any]) -> dict[str, Any]:
    rt = runtime.current()
    new = ModelConfig.model_validate(model)
    with rt.slot.hold({"task": "switch model"}):  # never while an edit of the model it replaces is on the device
        return _switch(rt, new)


def _switch(rt: "runtime.WorkerRuntime", new: ModelConfig) -> dict[str, Any]:
    old_id, new_id = rt.loaded, identity.model_identity(new)
    if old_id == new_id:
        rt.presence.publish(state="ready")
        return {"device": rt.device.queue, "load": "none"}
    rt.presence.publish(state="loading", model=new_id, load_started_at=None, load_finished_at=None)
    try:
        if identity.same_base(old_id, new_id) and hasattr(rt.model, "swap_lora"):
            kind, started = "lora", time.time()
            rt.model.swap_lora(new)
            finished = time.time()
        else:
            kind = "model"
            started, finished = _reload(rt, new)
    except Exception as exc:
        rt.presence.publish(state="failed", error=f"{exc.__class__.__name__}: {exc}")
        raise
    rt.model_config = new
    rt.load_started_at, rt.load_finished_at = started, finished
    _move_shared_queue(rt.name, identity.shared_queue(old_id), identity.shared_queue(new_id))
    rt.presence.publish(state="ready", shared_queue=identity.shared_queue(new_id), load=kind,
                        load_started_at=started, load_finished_at=finished, ready_at=time.time())
    log.info("%s: switched to %s (%s) in %.2fs", rt.name, identity.describe(new_id), kind, finished - started)
    return {"device": rt.device.queue, "load": kind, "seconds": finished - started}


def _reload(rt: "runtime.WorkerRuntime", new: ModelConfig) -> tuple[float, float]:
    """Unload, then load `new` in a load slot; the load's start and end (slot held), as at start-up."""
    rt.model.unload()
    rt.model = None
    gc.collect()
    _empty_cuda_cache()
    model = get_model_class(new.type)(new, rt.device)
    model.slot = rt.model_slot
    model.prepare()
    slots = LoadSlots(rt.redis, rt.cluster.namespace, rt.cluster.load_concurrency)
    with slots.hold(rt.name, timeout_s=rt.cluster.ready_timeout_s):
        started = time.time()
        model.load()
        finished = time.time()
    rt.model = model
    return started, finished


def _empty_cuda_cache() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _move_shared_queue(worker: str, old: str, new: str) -> None:
    # Control commands run in the worker's consumer thread, beside the task that sends them.
    control = current_app.control
    control.add_consumer(new, destination=[worker], reply=False)
    if old != new:
        control.cancel_consumer(old, destination=[worker], reply=False)


# ---------------------------------------------------------------- coordinator side


def ensure_model(app, redis, namespace: str, queues: list[str], model: ModelConfig, *, timeout_s: float,
                 should_stop=None, poll_s: float = 0.2) -> dict[str, Any]:
    """Make every worker of `queues` hold `model`; return what was done (nothing when they already do)."""
    wanted = identity.model_identity(model)
    records = read_workers(redis, namespace, queues)
    absent = [q for q, r in records.items() if r is None]
    if absent:
        raise ClusterError(f"no worker on {', '.join(absent)}: start them before submitting jobs")
    to_switch = [q for q, r in records.items() if r.get("model") != wanted]
    if not to_switch:
        return {"switched": [], "seconds": 0.0}
    started = time.monotonic()
    payload = model.model_dump(mode="json")
    for queue in to_switch:
        app.send_task(TASK_NAME, args=[payload], queue=queue, ignore_result=True)
    deadline = started + timeout_s
    while True:
        records = read_workers(redis, namespace, to_switch)
        failed = {q: r for q, r in records.items() if r and r.get("state") == "failed"}
        if failed:
            raise ClusterError("model switch failed: " + "; ".join(f"{q}: {r.get('error')}" for q, r in failed.items()))
        if all(r and r.get("state") == "ready" and r.get("model") == wanted for r in records.values()):
            return {"switched": to_switch, "seconds": time.monotonic() - started,
                    "load": sorted({r.get("load") for r in records.values()})}
        if should_stop is not None and should_stop():
            return {"switched": [], "seconds": time.monotonic() - started, "stopped": True}
        if time.monotonic() > deadline:
            raise ClusterError(f"workers did not switch to {identity.describe(wanted)} within {timeout_s:g}s")
        time.sleep(poll_s)
