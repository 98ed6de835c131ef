"""Is a worker gone? The one rule, asked by the dispatcher, the local cluster and the item claim.

The evidence is the worker's presence record (`workers/presence.py`): a
heartbeat rewrites it every `PRESENCE_BEAT_S`, and Redis drops it after
`PRESENCE_TTL_S` without one. A worker is gone when its record is missing
(three beats missed: killed, stopped, hung outside Python, or cut off from
Redis), when the record names another process (the device's worker was
started again), or when it says the worker failed. A retiring worker is not
gone: it finishes the item it holds, then leaves.

A worker judged gone may still be alive (a long pause, a network cut) and
finish its item later; fencing at the item's commit (see `tasks/commit.py`)
makes that harmless, so this rule can afford to be quick.

Silence is evidence only when the one who listens could have heard: after
the watcher's own link to Redis was down (Redis's host cut off from every
host, or the watcher's), every record has expired, and the workers need a
beat or two to write theirs again. `Vantage` says when silence counts again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterable

from redis import Redis

from . import keys

SERVING = "ready"


@dataclass(frozen=True)
class Seen:
    """One worker as its presence record shows it now."""

    queue: str
    record: dict[str, Any] | None

    @property
    def pid(self) -> int | None:
        return self.record.get("pid") if self.record else None

    @property
    def serving(self) -> bool:
        """Takes new items (loaded, not retiring, not switching models)."""
        return self.record is not None and self.record.get("state") == SERVING

    @property
    def silent(self) -> bool:
        """No heartbeat: the process is dead, stopped, hung outside Python or cut off (a failed one still speaks)."""
        return self.record is None

    @property
    def working(self) -> set[int]:
        """The items (indexes) this worker works on: on its device or still handing back (workers/activity.py).
        A record without that list (an older worker) names its one task."""
        if not self.serving:
            return set()
        if "working" in self.record:
            return set(self.record["working"] or ())
        return {self.record["task_index"]} if self.record.get("task_index") is not None else set()

    def gone(self, pid: int | None = None) -> str | None:
        """Why this worker (or its process `pid`, when given) is gone; None while it lives."""
        if self.record is None:
            return f"{self.queue}: worker is gone (no heartbeat for {keys.PRESENCE_TTL_S}s)"
        if pid is not None and self.pid is not None and self.pid != pid:
            return f"{self.queue}: worker exited (started again since)"
        if self.record.get("state") == "failed":
            return f"{self.queue}: worker failed ({self.record.get('error') or 'no reason given'})"
        return None


def look(redis: Redis, namespace: str, queues: Iterable[str]) -> dict[str, Seen]:
    """Every named worker as seen now (one round trip)."""
    names = sorted(set(queues))
    values = redis.mget([keys.worker(namespace, q) for q in names]) if names else []
    return {q: Seen(q, json.loads(v) if v else None) for q, v in zip(names, values)}


def gone(redis: Redis, namespace: str, queue: str, pid: int | None = None) -> str | None:
    """Why the worker serving `queue` (process `pid`, when given) is gone, or None while it lives."""
    return look(redis, namespace, [queue])[queue].gone(pid)


class Vantage:
    """Where a watcher stands: after a gap in its own view of Redis, missing records say nothing for one TTL."""

    GAP_S = keys.PRESENCE_TTL_S - keys.PRESENCE_BEAT_S  # longer than this without a look: records may have lapsed

    def __init__(self) -> None:
        self._last_look = time.monotonic()  # made by a watcher that has just reached Redis
        self._deaf_until = 0.0

    def looked(self) -> bool:
        """Note a look that reached Redis; True when a missing record may be taken as a worker gone."""
        now = time.monotonic()
        if now - self._last_look > self.GAP_S:
            self._deaf_until = now + keys.PRESENCE_TTL_S  # the workers' beats resume within this
        self._last_look = now
        return now >= self._deaf_until
