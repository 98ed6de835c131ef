"""Where workers drop results for one run: a Redis list read with a blocking pop.

Event-driven (BLPOP returns as soon as a result is pushed) and one
connection for the whole run, however many tasks are outstanding; Celery's
result consumer would hold a pub/sub subscription per task instead.
"""

from __future__ import annotations

import json
from typing import Any

from redis import Redis

DRAIN = 1000


class ResultInbox:
    def __init__(self, redis: Redis, key: str):
        self.redis = redis
        self.key = key

    def get(self, timeout_s: float) -> list[dict[str, Any]]:
        """Results that arrived, waiting at most `timeout_s` for the first one."""
        first = self.redis.blpop([self.key], timeout=max(0.001, timeout_s))
        if first is None:
            return []
        raw = [first[1]]
        more = self.redis.lpop(self.key, DRAIN)
        if more:
            raw.extend(more)
        return [json.loads(r) for r in raw]
