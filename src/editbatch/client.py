"""Submit runs to `editbatch serve` from Python, and follow them.

    from editbatch.client import Client
    client = Client("redis://:secret@redis-host:6379/0")
    job = client.submit(config)          # a run config as a mapping, absolute paths
    print(job.id, job.status()["state"])
    summary = job.wait(timeout=3600)     # the run's summary; JobFailed if it failed or was cancelled

Submitting puts the job into the job store in Redis, the coordinator's
only queue: it is listed as queued at once, the admission limit is checked,
and the coordinator is woken. A job id given twice names the same job.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from . import liveness, redisconn, runstate
from .jobs.contract import JobFailed
from .jobs.store import FINAL, JOB_ID, JobStore, QueueFull
from .workers.roots import outside_published

REDIS_RETRY_S = 10.0  # a call rides out a short Redis restart, then fails with the connection error

__all__ = ["Client", "Job", "JobFailed", "JobRefused", "QueueFull", "UnknownJob", "submit", "list_jobs"]


class UnknownJob(LookupError):
    """No job with this id in this namespace."""


class JobRefused(ValueError):
    """The job lies outside the folders the service's workers may use; nothing was queued."""


class Client:
    def __init__(self, broker: str | None = None, *, namespace: str = "editbatch"):
        self.broker = broker or os.environ.get("EDITBATCH_BROKER")
        if not self.broker:
            raise ValueError("no broker: pass its redis:// URL or set EDITBATCH_BROKER")
        self.ns = namespace
        self.redis = redisconn.connect(self.broker)
        self.store = JobStore(self.redis, namespace, retry_s=REDIS_RETRY_S)

    def submit(self, config: dict[str, Any], *, priority: int = 0, job_id: str | None = None) -> "Job":
        job_id = job_id or uuid.uuid4().hex[:16]
        if not JOB_ID.match(job_id):
            raise ValueError(f"job id {job_id!r}: use 1 to 64 of A-Z a-z 0-9 _ . -")
        self._check_roots(config)
        job = Job(self, job_id)
        job.created = self.store.create(job_id, config, priority=priority)
        return job

    def resume(self, job_id: str, config: dict[str, Any] | None = None) -> "Job":
        """Queue an ended (cancelled, failed, done) job again: it finishes on its folder, reusing finished items.

        A job still queued or running is left as it is. `config` replaces the job's config (same folder).
        """
        if config is not None:
            self._check_roots(config)
        before = self.store.resume(job_id, config)
        if before is None:
            raise UnknownJob(f"no job {job_id!r}")
        job = Job(self, job_id)
        job.resumed_from = before if before in FINAL else None
        return job

    def _check_roots(self, config: dict[str, Any]) -> None:
        """Refuse a job the service could not run: outside the coordinator's roots or a live worker's."""
        settings = self.store.settings()
        records = redisconn.retrying(lambda: liveness.look(self.redis, self.ns, settings["queues"]), REDIS_RETRY_S)
        reason = outside_published(config, settings, {q: seen.record for q, seen in records.items()})
        if reason:
            raise JobRefused(reason)

    def prune(self, older_than_s: float) -> list[str]:
        """Delete the records of jobs that ended more than `older_than_s` seconds ago; their ids."""
        return self.store.prune(older_than_s)

    def job(self, job_id: str) -> "Job":
        if self.store.get(job_id) is None:
            raise UnknownJob(f"no job {job_id!r}")
        return Job(self, job_id)

    def list_jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        return self.store.list(state)

    def close(self) -> None:
        self.redis.close()


class Job:
    def __init__(self, client: Client, job_id: str):
        self.client = client
        self.id = job_id
        self.created = False  # by this submit (False: the id named an existing job)
        self.resumed_from: str | None = None  # by resume: the ended state it was queued again from

    def status(self) -> dict[str, Any]:
        record = self.client.store.get(self.id)
        if record is None:
            raise UnknownJob(f"no job {self.id!r}")
        return record

    def wait(self, timeout: float | None = None, poll_s: float = 0.5) -> dict[str, Any]:
        """The run's summary once the job is done; JobFailed when it failed or was cancelled, TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self.status()
            if record["state"] == "done":
                return record.get("summary") or {}
            if record["state"] in FINAL:
                raise JobFailed(record.get("error") or record["state"], record["state"])
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still {record['state']} after {timeout:g}s")
            time.sleep(poll_s)

    def cancel(self) -> str:
        """Stop this job only: queued, it never starts; running, its items stop and what finished is kept."""
        before = self.client.store.request_cancel(self.id)
        if before is None:
            raise UnknownJob(f"no job {self.id!r}")
        if before in FINAL:
            return f"job {self.id} had already ended ({before})"
        if before == "queued":
            return f"job {self.id}: cancelled before it started"
        run_id = self.status().get("run_id")
        if run_id:
            redisconn.retrying(lambda: runstate.mark_cancelled(self.client.redis, self.client.ns, run_id),
                               REDIS_RETRY_S)
        return f"job {self.id}: cancel requested; its running edits stop at the next step"

    def __repr__(self) -> str:
        return f"Job({self.id!r})"


def submit(config: dict[str, Any], *, broker: str | None = None, priority: int = 0, job_id: str | None = None,
           namespace: str = "editbatch") -> Job:
    return Client(broker, namespace=namespace).submit(config, priority=priority, job_id=job_id)


def list_jobs(state: str | None = None, *, broker: str | None = None, namespace: str = "editbatch"):
    return Client(broker, namespace=namespace).list_jobs(state)
