"""The job queue: one hash per job, a queue ordered by priority then submission, a running set, leases.

These Redis structures are the only queue of jobs. Clients and the Celery
front door add to it (`create`); coordinators take the head of it when a
run slot is free (`take`), hold a lease per running job, and take over a
running job whose lease ran out (`claim`). Every change that may let a job
start pushes the wake-up list that coordinators block on.

Every value in a record is JSON. The records survive a restart of the
coordinator, and of Redis when it keeps an append-only file.
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

# Wake coordinators: a list of at most one element, so nobody listening costs nothing.
_WAKE = "redis.call('RPUSH', KEYS[{n}], '1') redis.call('LTRIM', KEYS[{n}], -1, -1)"

# Create the record unless it exists; refuse when the queue is full. 1 created, 0 existed, -1 full.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[1]) then return -1 end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
""" + _WAKE.format(n=4) + """
return 1
"""

# Take the head of the queue into the running set, with a lease for its owner, if a slot is free and
# every running job uses the same model (ARGV[5], the identity hash as JSON); jobs never share workers
# that hold different models. Returns taken, full, other-model, not-head or gone.
_TAKE = """
if redis.call('ZRANGE', KEYS[2], 0, 0)[1] ~= ARGV[1] then return 'not-head' end
if redis.call('HGET', KEYS[1], 'state') ~= '"queued"' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'gone'
end
local running = redis.call('SMEMBERS', KEYS[3])
if #running >= tonumber(ARGV[2]) then return 'full' end
for _, other in ipairs(running) do
  local model = redis.call('HGET', ARGV[7] .. other, 'model_key')
  if model and model ~= ARGV[5] then return 'other-model' end
end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') + 1
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[1], 'state', '"running"', 'model_key', ARGV[5], 'run_id', ARGV[6], 'owner', ARGV[8],
           'attempts', attempts, 'started_at', ARGV[9])
redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[4])
return 'taken'
"""

# Take over a running job whose lease is gone (its coordinator died), or ours after a lost reply.
_CLAIM = """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= '"running"' then
  redis.call('SREM', KEYS[2], ARGV[1])
  return 0
end
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[2] then return 0 end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') + 1
redis.call('HSET', KEYS[1], 'run_id', ARGV[4], 'owner', ARGV[5], 'attempts', attempts)
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
return 1
"""

# Renew the lease if it is ours, take it again if it ran out: 1 held, 0 someone else holds it.
_KEEP = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"

# Cancel a job that is still queued; returns its state as it was.
_CANCEL_QUEUED = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
redis.call('HSET', KEYS[1], 'cancel_requested', 'true')
if state == '"queued"' then
  redis.call('HSET', KEYS[1], 'state', '"cancelled"', 'finished_at', ARGV[2], 'error', ARGV[3])
  redis.call('ZREM', KEYS[2], ARGV[1])
  """ + _WAKE.format(n=3) + """
end
return state
"""

# Write the final fields (ARGV[3..], pairs) and take the job (ARGV[1]) out of the queue and the running set.
# ARGV[2], when not empty, is the attempt's run id (JSON): the fence. An attempt whose job was taken over
# since (a paused coordinator waking up) finds another run id there and writes nothing. 1 written, 0 fenced.
_FINISH = """
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'run_id') ~= ARGV[2] then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
""" + _WAKE.format(n=4) + """
return 1
"""


# Queue an ended job again on its own folder (resume); ARGV[3], when not empty, replaces its config.
# Returns the state it had: only an ended job is queued again.
_RESUME = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state ~= '"done"' and state ~= '"failed"' and state ~= '"cancelled"' then return state end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'config', ARGV[3]) end
redis.call('HSET', KEYS[1], 'state', '"queued"', 'cancel_requested', 'false', 'error', 'null', 'finished_at', 'null',
           'resumed_at', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
""" + _WAKE.format(n=3) + """
return state
"""


# Delete an ended job's record if it ended before ARGV[2] (epoch seconds). 1 deleted.
_PRUNE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= '"done"' and state ~= '"failed"' and state ~= '"cancelled"' then
  if not state then redis.call('ZREM', KEYS[2], ARGV[1]) end
  return 0
end
local finished = tonumber(redis.call('HGET', KEYS[1], 'finished_at') or '0') or 0
if finished >= tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
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

    def _eval(self, script: str, keys_: list[str], *args):
        return self._call(lambda: self.redis.eval(script, len(keys_), *keys_, *args))

    def _job(self, job_id: str) -> str:
        return keys.job(self.ns, job_id)

    # ------------------------------------------------------------ submitting and cancelling

    def create(self, job_id: str, config: dict[str, Any], *, priority: int = 0, max_queued: int | None = None,
               via: str = "client") -> bool:
        """Queue a job; False if a job with this id exists already (submitting twice is harmless)."""
        now = time.time()
        limit = max_queued if max_queued is not None else self.settings()["max_queued"]
        fields = {"id": job_id, "state": "queued", "priority": priority, "config": config, "via": via,
                  "submitted_at": now, "started_at": None, "finished_at": None,
                  "output_dir": str((config or {}).get("output_dir")) if isinstance(config, dict) else None,
                  "counts": None, "summary": None, "error": None, "run_id": None, "attempts": 0}
        args = [limit, queue_score(priority, now), now, job_id]
        for key, value in fields.items():
            args += [key, json.dumps(value)]
        created = self._eval(_CREATE, [self._job(job_id), keys.jobs_queued(self.ns), keys.jobs_all(self.ns),
                                       keys.jobs_wake(self.ns)], *args)
        if created == 0 and json.loads(self._call(lambda: self.redis.hget(self._job(job_id), "submitted_at"))
                                       or "null") == now:
            created = 1  # this call's own record: an earlier try was applied but its reply lost
        if created == -1:
            raise QueueFull(f"the job queue is full ({limit} jobs waiting, jobs.max_queued); "
                            "try again later or cancel queued jobs")
        return created == 1

    def request_cancel(self, job_id: str) -> str | None:
        """Mark the job to be cancelled; a queued one ends at once. Returns its state before, None if unknown."""
        now = json.dumps(time.time())
        before = self._eval(_CANCEL_QUEUED, [self._job(job_id), keys.jobs_queued(self.ns), keys.jobs_wake(self.ns)],
                            job_id, now, json.dumps("cancelled before it started"))
        return json.loads(before) if before else None

    def resume(self, job_id: str, config: dict[str, Any] | None = None) -> str | None:
        """Queue an ended job again; it runs on its folder reusing finished items. Its state before; None if unknown.

        A job that is queued or running is left alone (its state is returned).
        """
        record = self.get(job_id)
        if record is None:
            return None
        now = time.time()
        before = self._eval(_RESUME, [self._job(job_id), keys.jobs_queued(self.ns), keys.jobs_wake(self.ns)],
                            job_id, json.dumps(now), json.dumps(config) if config is not None else "",
                            queue_score(int(record.get("priority") or 0), now))
        return json.loads(before) if before else None

    def prune(self, older_than_s: float) -> list[str]:
        """Delete the records of jobs that ended more than `older_than_s` ago; their ids.

        Each is checked and deleted in one script, so a job queued again meanwhile (resumed) is kept.
        """
        cutoff = time.time() - older_than_s
        pruned = []
        for job_id in [i.decode() for i in self._call(lambda: self.redis.zrange(keys.jobs_all(self.ns), 0, -1))]:
            if self._eval(_PRUNE, [self._job(job_id), keys.jobs_all(self.ns)], job_id, cutoff):
                pruned.append(job_id)
        return pruned

    # ------------------------------------------------------------ coordinators

    def take(self, job_id: str, *, owner: str, max_running: int, model_key: str, run_id: str) -> str:
        """Move the head of the queue to running under `owner`'s lease; see _TAKE for the answers."""
        answer = self._eval(_TAKE, [self._job(job_id), keys.jobs_queued(self.ns), keys.jobs_running(self.ns),
                                    keys.job_lease(self.ns, job_id)],
                            job_id, max_running, owner, keys.JOB_LEASE_TTL_S * 1000, json.dumps(model_key),
                            json.dumps(run_id), self._job(""), json.dumps(owner), json.dumps(time.time()))
        return answer.decode() if isinstance(answer, bytes) else str(answer)

    def claim(self, job_id: str, *, owner: str, run_id: str) -> bool:
        """Take over a running job whose lease ran out (or is `owner`'s); it gets a new run id."""
        return bool(self._eval(_CLAIM, [self._job(job_id), keys.jobs_running(self.ns),
                                        keys.job_lease(self.ns, job_id)],
                               job_id, owner, keys.JOB_LEASE_TTL_S * 1000, json.dumps(run_id), json.dumps(owner)))

    def keep_lease(self, job_id: str, owner: str) -> bool:
        """Renew `owner`'s lease on a running job; False when another coordinator took the job over."""
        return bool(self._eval(_KEEP, [keys.job_lease(self.ns, job_id)], owner, keys.JOB_LEASE_TTL_S * 1000))

    def release(self, job_id: str, owner: str) -> None:
        self._eval(_RELEASE, [keys.job_lease(self.ns, job_id)], owner)

    def lease_holder(self, job_id: str) -> str | None:
        holder = self._call(lambda: self.redis.get(keys.job_lease(self.ns, job_id)))
        return holder.decode() if holder is not None else None

    def wake(self) -> None:
        self._eval(_WAKE.format(n=1), [keys.jobs_wake(self.ns)])

    def wait_for_change(self, timeout_s: float, stop=None) -> bool:
        """Block until the queue or the running set changed, or `timeout_s` passed; True if woken."""
        got = redisconn.blpop(self.redis, [keys.jobs_wake(self.ns)], timeout_s, stop=stop)
        return got is not None

    def update(self, job_id: str, **fields: Any) -> None:
        mapping = {k: json.dumps(v) for k, v in fields.items()}
        self._call(lambda: self.redis.hset(self._job(job_id), mapping=mapping))

    def finish(self, job_id: str, state: str, *, run_id: str | None = None, **fields: Any) -> bool:
        """Write the job's end; with `run_id`, only while that attempt still owns the job (False otherwise)."""
        args = [job_id, json.dumps(run_id) if run_id else ""]
        for key, value in {"state": state, "finished_at": time.time(), **fields}.items():
            args += [key, json.dumps(value)]
        return bool(self._eval(_FINISH, [self._job(job_id), keys.jobs_queued(self.ns), keys.jobs_running(self.ns),
                                         keys.jobs_wake(self.ns)], *args))

    def publish_settings(self, *, max_queued: int, max_running: int, input_roots: list[str] = (),
                         output_roots: list[str] = (), queues: list[str] = ()) -> None:
        """What clients check at submission: the queue limit, the folders every job must lie in, and the
        workers' queues (whose published roots must hold the job's folders too)."""
        value = json.dumps({"max_queued": max_queued, "max_running": max_running, "queues": list(queues),
                            "input_roots": list(input_roots), "output_roots": list(output_roots)})
        self._call(lambda: self.redis.set(keys.jobs_settings(self.ns), value))

    # ------------------------------------------------------------ reading

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self._call(lambda: self.redis.hgetall(self._job(job_id)))
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

    def queued(self) -> list[str]:
        """Queued job ids, the next to run first."""
        return [i.decode() for i in self._call(lambda: self.redis.zrange(keys.jobs_queued(self.ns), 0, -1))]

    def head(self) -> str | None:
        """The job to run next, if any."""
        first = self._call(lambda: self.redis.zrange(keys.jobs_queued(self.ns), 0, 0))
        return first[0].decode() if first else None

    def running(self) -> list[str]:
        return sorted(i.decode() for i in self._call(lambda: self.redis.smembers(keys.jobs_running(self.ns))))

    def cancel_requested(self, job_id: str) -> bool:
        return self._call(lambda: self.redis.hget(self._job(job_id), "cancel_requested")) == b"true"

    def settings(self) -> dict[str, Any]:
        raw = self._call(lambda: self.redis.get(keys.jobs_settings(self.ns)))
        found = json.loads(raw) if raw else {}
        return {"max_queued": int(found.get("max_queued", DEFAULT_MAX_QUEUED)),
                "max_running": int(found.get("max_running", DEFAULT_MAX_RUNNING)),
                "queues": list(found.get("queues") or []),
                "input_roots": list(found.get("input_roots") or []),
                "output_roots": list(found.get("output_roots") or [])}
