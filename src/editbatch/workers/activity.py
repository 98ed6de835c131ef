"""What a worker is doing right now: the item and since when, in its presence record,
and which items it holds, told to the producer.

`editbatch status` tells busy from idle devices with the presence record.
The producer learns from a "held" event (sent when a message reaches the
worker) and a "started" event (sent just before the model call) where each
item is, so the items of a worker that dies or hangs are rerouted in
seconds, even from the shared queue where any worker could have taken them.
"""

from __future__ import annotations

import time

from celery.signals import task_postrun, task_prerun, task_received

from . import runtime
from ..tasks.contract import TASK_NAME


def _publish(**fields) -> None:
    try:
        runtime.current().presence.publish_soon(**fields)  # written by the beat thread: no wait between tasks
    except Exception:  # noqa: BLE001 - status is informative; a task must never fail for it
        pass


@task_prerun.connect
def _busy(sender=None, args=None, **_) -> None:
    if getattr(sender, "name", None) != TASK_NAME:
        return
    payload = (args or [{}])[0] if args else {}
    _publish(task=payload.get("id") if isinstance(payload, dict) else None,
             task_index=payload.get("index") if isinstance(payload, dict) else None,
             task_run=payload.get("run") if isinstance(payload, dict) else None, busy_since=time.time())


@task_postrun.connect
def _idle(sender=None, **_) -> None:
    if getattr(sender, "name", None) == TASK_NAME:
        _publish(task=None, task_index=None, task_run=None, busy_since=None, idle_since=time.time())


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
