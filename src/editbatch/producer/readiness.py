"""Unified start: wait until every configured device has a worker that finished loading."""

from __future__ import annotations

import time
from typing import Any, Callable

from redis import Redis

from ..errors import ClusterError
from ..models import identity
from ..workers.presence import read_workers


def wait_for_workers(redis: Redis, namespace: str, queues: list[str], *, timeout_s: float,
                     model: dict[str, Any], check_alive: Callable[[], None] | None = None,
                     on_change: Callable[[dict[str, str]], None] | None = None,
                     poll_s: float = 0.2) -> dict[str, dict[str, Any]]:
    """Return the ready records of all `queues`, or raise ClusterError naming the missing ones."""
    deadline = time.monotonic() + timeout_s
    last_states: dict[str, str] = {}
    while True:
        records = read_workers(redis, namespace, queues)
        states = {q: (r or {}).get("state", "absent") for q, r in records.items()}
        if states != last_states and on_change:
            on_change(states)
        last_states = states
        failed = {q: r for q, r in records.items() if r and r.get("state") == "failed"}
        if failed:
            detail = "; ".join(f"{q}: {r.get('error')}" for q, r in failed.items())
            raise ClusterError(f"worker failed to load its model: {detail}")
        if all(s == "ready" for s in states.values()):
            _check_models(records, model)
            return records  # type: ignore[return-value]
        if check_alive:
            check_alive()
        if time.monotonic() > deadline:
            waiting = ", ".join(f"{q} ({s})" for q, s in states.items() if s != "ready")
            raise ClusterError(f"workers not ready after {timeout_s:g}s: {waiting}. Start them with "
                               f"`editbatch worker --config CONFIG --device N` or use cluster.broker: auto")
        time.sleep(poll_s)


def _check_models(records: dict[str, dict[str, Any] | None], model: dict[str, Any]) -> None:
    """Every worker must hold exactly the model asked for: dtype, LoRA and the rest, not only type and path."""
    wrong = [f"{q} serves {identity.describe(r.get('model'))}: {identity.difference(model, r.get('model'))}"
             for q, r in records.items() if r and not identity.matches(model, r.get("model"))]
    if wrong:
        raise ClusterError(f"workers serve another model than this run's {identity.describe(model)}: "
                           + "; ".join(wrong))
