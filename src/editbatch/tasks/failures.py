"""A failed item is a failed Celery task, so Flower and `celery events` show it as FAILURE.

The producer never reads the task's return value (results travel through
the run's inbox list), so raising after reporting changes nothing for it.
The task lists `ItemFailed` in `throws`: Celery then logs it at INFO without
a traceback (the task has already logged the error once), and with
acks_late and the default task_acks_on_failure_or_timeout the message is
acknowledged, never redelivered; no retry is configured.
"""

from __future__ import annotations

from typing import Any


class ItemFailed(Exception):
    """`args`: the error line, then the full result dict (as the task would have returned it)."""

    def __init__(self, error: str, result: dict[str, Any] | None = None):
        super().__init__(error, result or {})

    def __str__(self) -> str:
        return str(self.args[0])

    def __repr__(self) -> str:
        # What Celery puts in the task-failed event (Flower's "Exception"): the error line, not the result dict.
        return f"ItemFailed({self.args[0]!r})"


class Skipped(Exception):
    """The task is not run at all: its run is over, or the producer took this copy back for an idle device.
    Nothing is computed, reported or counted; the task returns a `skipped` result."""

    def __init__(self, reason: str, *, taken_back: bool = False):
        super().__init__(reason)
        self.taken_back = taken_back


def fail_task_if_failed(result: dict[str, Any]) -> dict[str, Any]:
    """Return `result` for an item that went through; raise ItemFailed for one that did not."""
    if result.get("status") != "ok":
        raise ItemFailed(f"{result.get('id')}: {result.get('error') or 'failed'}", result)
    return result


def task_args_repr(payload: dict[str, Any]) -> str:
    """What Flower's task list shows as the arguments: the item and its run, not the whole payload."""
    parts = [f"item={payload.get('id')}", f"run={payload.get('run')}"]
    if payload.get("batch") is not None:
        parts.append(f"batch={payload['batch']}")
    return " ".join(parts)
