"""Where workers drop results for one run: a Redis list read with a blocking pop.

Event-driven (BLPOP returns as soon as a result is pushed) and one
connection for the whole run, however many tasks are outstanding; Celery's
result consumer would hold a pub/sub subscription per task instead.
"""

from __future__ import annotations

import json
from typing import Any

from redis import Redis

from .. import redisconn

DRAIN = 1000


class ResultInbox:
    def __init__(self, redis: Redis, key: str):
        self.redis = redis
        self.key = key

    def get(self, timeout_s: float) -> list[dict[str, Any]]:
        """Results that arrived, waiting at most `timeout_s` for the first one."""
        first = redisconn.blpop(self.redis, [self.key], timeout_s)
        if first is None:
            return []
        raw = [first[1]]
        try:
            more = self.redis.lpop(self.key, DRAIN)
        except redisconn.TRANSIENT:
            more = None  # still in the list: read on the next call
        if more:
            raw.extend(more)
        return [json.loads(r) for r in raw]
