"""What a worker is doing right now: the item and since when, in its presence record,
and which items it holds, told to the producer.

`editbatch status` tells busy from idle devices with the presence record
(written when a task takes or leaves the device slot). The record's
`working` lists every item whose task took the device and has not handed
back yet: the one computing and those still writing their files, so the
producer never takes an item being committed for a lost one.
The producer learns from a "held" event (sent when a message reaches the
worker) and a "started" event (sent just before the model call) where each
item is, so the items of a worker that dies or hangs are rerouted in
seconds, even from the shared queue where any worker could have taken them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from celery.signals import task_received

from . import runtime
from ..tasks.contract import TASK_NAME


def _publish(at_once: bool = False, **fields) -> None:
    try:
        # Written by the beat thread: no wait between tasks.
        runtime.current().presence.publish_soon(at_once=at_once, **fields)
    except Exception:  # noqa: BLE001 - status is informative; a task must never fail for it
        pass


_working: Counter = Counter()  # item index -> tasks of it between the device and their hand-back
_working_lock = threading.Lock()


def begin(index: int) -> None:
    """The item's task took the device: it is this worker's until `end`."""
    with _working_lock:
        _working[index] += 1
        # At once: the producer takes an item that has started and is in no worker's `working` for lost, and
        # a host cut off just after this must leave a record that says the item is here.
        _publish(at_once=True, working=sorted(_working))


def end(index: int) -> None:
    """The item's task handed back (its result is with the producer) or was skipped."""
    with _working_lock:
        _working[index] -= 1
        if _working[index] <= 0:
            del _working[index]
        _publish(working=sorted(_working))


def show_busy(what: dict | None) -> None:
    """The device slot's holder (workers/device_slot.py), in the presence record: `editbatch status`'s busy
    or idle. The slot, not Celery's task hooks: a worker runs its held tasks side by side, one on the device."""
    if what is None:
        _publish(task=None, task_index=None, task_run=None, busy_since=None, idle_since=time.time())
    else:
        _publish(**what)


@task_received.connect
def _held(request=None, **_) -> None:
    if getattr(request, "task_name", None) != TASK_NAME:
        return
    try:
        payload = request.args[0]
        if isinstance(payload, dict) and payload.get("report"):
            runtime.current().event(payload["report"], "held", payload.get("index"))
    except Exception:  # noqa: BLE001 - a lost event costs a reroute check, never the task
        pass
