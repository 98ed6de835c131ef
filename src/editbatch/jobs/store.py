"""Job records in Redis: one hash per job, a queue ordered by priority then submission, a running set.

Every value in a record is JSON. The records, not Flower's memory and not
the Celery messages, are the truth about a job: they survive a restart of
the coordinator, and of Redis when it keeps an append-only file.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from redis import Redis

from .. import keys, redisconn

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL = ("done", "failed", "cancelled")
JOB_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DEFAULT_MAX_QUEUED = 100
DEFAULT_MAX_RUNNING = 1

# Create the record unless it exists; refuse when the queue is full. 1 created, 0 existed, -1 full.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[1]) then return -1 end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return 1
"""

# Move a queued job to running if it is among the first free slots' worth of the queue.
_TAKE_SLOT = """
if redis.call('HGET', KEYS[1], 'state') ~= '"queued"' then return 0 end
local free = tonumber(ARGV[2]) - redis.call('SCARD', KEYS[3])
if free <= 0 then return 0 end
local rank = redis.call('ZRANK', KEYS[2], ARGV[1])
if not rank or rank >= free then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[1], 'state', '"running"')
return 1
"""

# Cancel a job that is still queued; returns its state as it was.
_CANCEL_QUEUED = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
redis.call('HSET', KEYS[1], 'cancel_requested', 'true')
if state == '"queued"' then
  redis.call('HSET', KEYS[1], 'state', '"cancelled"', 'finished_at', ARGV[2], 'error', ARGV[3])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return state
"""


class QueueFull(RuntimeError):
    """More than max_queued jobs would wait."""


def queue_score(priority: int, submitted_at: float) -> float:
    # Higher priority first; equal priorities in submission order (times stay below 1e10 s).
    return -float(priority) * 1e10 + submitted_at


class JobStore:
    """`retry_s`: how long each call rides out a dropped connection (a Redis restart) before raising.

    Every write is safe to repeat: a call cut off after Redis applied it finds its own work done.
    """

    def __init__(self, redis: Redis, namespace: str, *, retry_s: float = 0.0):
        self.redis = redis
        self.ns = namespace
        self.retry_s = retry_s

    def _call(self, fn):
        return redisconn.retrying(fn, self.retry_s)

    # ------------------------------------------------------------ writing

    def create(self, job_id: str, config: dict[str, Any], *, priority: int = 0, max_queued: int | None = None,
               via: str = "client") -> bool:
        """Register a queued job; False if a job with this id exists already (submitting twice is harmless)."""
        now = time.time()
        limit = max_queued if max_queued is not None else self.settings()["max_queued"]
        fields = {"id": job_id, "state": "queued", "priority": priority, "config": config, "via": via,
                  "submitted_at": now, "started_at": None, "finished_at": None,
                  "output_dir": str((config or {}).get("output_dir")) if isinstance(config, dict) else None,
                  "counts": None, "summary": None, "error": None, "run_id": None, "attempts": 0}
        args = [limit, queue_score(priority, now), now, job_id]
        for key, value in fields.items():
            args += [key, json.dumps(value)]
        created = self._call(lambda: self.redis.eval(_CREATE, 3, keys.job(self.ns, job_id), keys.jobs_queued(self.ns),
                                                     keys.jobs_all(self.ns), *args))
        if created == 0 and json.loads(self._call(lambda: self.redis.hget(keys.job(self.ns, job_id), "submitted_at"))
                                       or "null") == now:
            created = 1  # this call's own record: an earlier try was applied but its reply lost
        if created == -1:
            raise QueueFull(f"the job queue is full ({limit} jobs waiting, jobs.max_queued); "
                            "try again later or cancel queued jobs")
        return created == 1

    def update(self, job_id: str, **fields: Any) -> None:
        mapping = {k: json.dumps(v) for k, v in fields.items()}
        self._call(lambda: self.redis.hset(keys.job(self.ns, job_id), mapping=mapping))

    def take_slot(self, job_id: str, max_running: int) -> bool:
        return bool(self._call(lambda: self.redis.eval(_TAKE_SLOT, 3, keys.job(self.ns, job_id),
                                                       keys.jobs_queued(self.ns), keys.jobs_running(self.ns), job_id,
                                                       max_running)))

    def finish(self, job_id: str, state: str, **fields: Any) -> None:
        mapping = {k: json.dumps(v) for k, v in {"state": state, "finished_at": time.time(), **fields}.items()}

        def write():
            with self.redis.pipeline() as pipe:
                pipe.hset(keys.job(self.ns, job_id), mapping=mapping)
                pipe.zrem(keys.jobs_queued(self.ns), job_id)
                pipe.srem(keys.jobs_running(self.ns), job_id)
                pipe.execute()

        self._call(write)

    def request_cancel(self, job_id: str) -> str | None:
        """Mark the job to be cancelled; a queued one ends at once. Returns its state before, None if unknown."""
        now = json.dumps(time.time())
        before = self._call(lambda: self.redis.eval(_CANCEL_QUEUED, 2, keys.job(self.ns, job_id),
                                                    keys.jobs_queued(self.ns), job_id, now,
                                                    json.dumps("cancelled before it started")))
        return json.loads(before) if before else None

    def publish_settings(self, *, max_queued: int, max_running: int) -> None:
        value = json.dumps({"max_queued": max_queued, "max_running": max_running})
        self._call(lambda: self.redis.set(keys.jobs_settings(self.ns), value))

    # ------------------------------------------------------------ reading

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self._call(lambda: self.redis.hgetall(keys.job(self.ns, job_id)))
        if not raw:
            return None
        record = {k.decode(): json.loads(v) for k, v in raw.items()}
        if record.get("state") == "queued":
            rank = self._call(lambda: self.redis.zrank(keys.jobs_queued(self.ns), job_id))
            record["position"] = None if rank is None else rank + 1
        return record

    def list(self, state: str | None = None) -> list[dict[str, Any]]:
        ids = [i.decode() for i in self._call(lambda: self.redis.zrange(keys.jobs_all(self.ns), 0, -1))]
        records = [r for r in (self.get(i) for i in ids) if r is not None]
        return [r for r in records if state is None or r.get("state") == state]

    def unfinished(self) -> list[str]:
        queued = self._call(lambda: self.redis.zrange(keys.jobs_queued(self.ns), 0, -1))
        running = self._call(lambda: self.redis.smembers(keys.jobs_running(self.ns)))
        return sorted({i.decode() for i in [*queued, *running]})

    def cancel_requested(self, job_id: str) -> bool:
        return self._call(lambda: self.redis.hget(keys.job(self.ns, job_id), "cancel_requested")) == b"true"

    def queued_count(self) -> int:
        return int(self._call(lambda: self.redis.zcard(keys.jobs_queued(self.ns))))

    def settings(self) -> dict[str, int]:
        raw = self._call(lambda: self.redis.get(keys.jobs_settings(self.ns)))
        found = json.loads(raw) if raw else {}
        return {"max_queued": int(found.get("max_queued", DEFAULT_MAX_QUEUED)),
                "max_running": int(found.get("max_running", DEFAULT_MAX_RUNNING))}
