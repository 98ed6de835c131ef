"""What a worker is doing right now, in its presence record: the item and since when.

`editbatch status` tells busy from idle devices with it. One extra Redis
write when a task starts and one when it ends.
"""

from __future__ import annotations

import time

from celery.signals import task_postrun, task_prerun

from . import runtime
from ..tasks.contract import TASK_NAME


def _publish(**fields) -> None:
    try:
        runtime.current().presence.publish(**fields)
    except Exception:  # noqa: BLE001 - status is informative; a task must never fail for it
        pass


@task_prerun.connect
def _busy(sender=None, args=None, **_) -> None:
    if getattr(sender, "name", None) != TASK_NAME:
        return
    payload = (args or [{}])[0] if args else {}
    _publish(task=payload.get("id") if isinstance(payload, dict) else None,
             task_run=payload.get("run") if isinstance(payload, dict) else None, busy_since=time.time())


@task_postrun.connect
def _idle(sender=None, **_) -> None:
    if getattr(sender, "name", None) == TASK_NAME:
        _publish(task=None, task_run=None, busy_since=None, idle_since=time.time())
