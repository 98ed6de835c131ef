"""Sync mode on the worker: wait for the previous batch before starting, count this item in once its edit is done.

The barrier itself is `barrier.BatchBarrier`; this is the task's side of it,
with the payload's barrier keys checked against the worker's namespace.
"""

from __future__ import annotations

from typing import Any

from .. import keys, redisconn
from ..barrier import BatchBarrier
from ..workers import runtime
from . import claim
from .contract import EditTask
from .failures import Skipped
from .handback import HandBack

DEFAULT_WAIT_S = 3600.0


def barrier_of(data: dict[str, Any], namespace: str) -> BatchBarrier:
    """The barrier a payload names; only one of some run's keys in our namespace."""
    barrier = BatchBarrier.from_dict(data)
    if not keys.is_run_key(namespace, barrier.prefix):
        raise ValueError(f"key {barrier.prefix!r} is outside namespace {namespace!r}")
    return barrier


def wait_for_previous_batch(task: EditTask, rt: "runtime.WorkerRuntime", start: claim.Start) -> None:
    """Return once every item of the previous batch finished, the item started (`start`, in the round trip
    that wakes it); Skipped when the run ends first, an error when time runs out or the worker shuts down."""
    if not task.wait_for:
        return
    timeout = task.wait_timeout_s or DEFAULT_WAIT_S
    barrier = barrier_of(task.wait_for, rt.cluster.namespace)
    opened, said = barrier.wait_then(rt.redis, timeout, start.command,
                                     stop=lambda: runtime.shutting_down.is_set() or rt.run_ended(task.run))
    if not opened:
        if runtime.shutting_down.is_set():
            raise RuntimeError(f"this worker is shutting down; not started (it waited for batch {barrier.batch})")
        if rt.run_ended(task.run):
            raise Skipped(f"run {task.run} has ended (this item waited for batch {barrier.batch})")
        raise TimeoutError(f"batch {barrier.batch} did not finish within {timeout:g}s; not started")
    if said != b"started":
        raise Skipped(f"run {task.run} has ended (found as batch {barrier.batch} finished)")


def arrive_now(task: EditTask, rt: "runtime.WorkerRuntime") -> bool:
    """Arrive as soon as the model call has finished, one try: the barrier's rule is about model calls (no
    task of batch k+1 starts before every one of batch k finished), so the next batch need not wait for
    this item's fsyncs and commit. False when it did not: then the hand-back arrives, with retries."""
    if not task.arrive_at:
        return False
    barrier = barrier_of(task.arrive_at, rt.cluster.namespace)
    try:
        barrier.arrive(rt.redis, task.index)
    except redisconn.TRANSIENT:
        return False
    return True


def arrive(task: EditTask, rt: "runtime.WorkerRuntime", hand_back: HandBack | None = None) -> None:
    """Count this item in at its batch's barrier (ok or not); once per item however often it is called.
    With `hand_back`, the arrival goes with the item's hand-back script instead of on its own."""
    if task.arrive_at:
        barrier = barrier_of(task.arrive_at, rt.cluster.namespace)
        if hand_back is not None:
            hand_back.arrive(barrier, task.index)
        else:
            runtime.keep_retrying(lambda: barrier.arrive(rt.redis, task.index))
