"""The coordinator: runs queued jobs with the producer (`Run`) against warm workers.

Each `editbatch.job` message is handled by one thread of the coordinator's
Celery worker (`editbatch serve`): it registers the job if no client did,
waits for a run slot (priority, then submission order, `jobs.max_running`
at a time), makes the workers hold the job's model, runs it, and records
the outcome. The Celery message carries the job; the record in Redis says
where it stands. A lease per job tells a live owner from a dead one: a job
whose coordinator died is sent again (same task id) and resumed on the same
output folder, so it is neither lost nor run twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from celery.exceptions import Reject

from .. import keys, redisconn
from ..celery_app import make_app
from ..config import RunConfig, config_from_mapping
from ..errors import ConfigError, EditBatchError, RunCancelled
from ..leases import Lease
from ..workers.roots import Roots, inside
from .contract import TASK_NAME, JobFailed, check_kwargs
from .store import FINAL, JobStore, QueueFull

log = logging.getLogger("editbatch.jobs")

QUEUE_POLL_S = 0.5
ORPHAN_CHECK_S = 5.0
PROGRESS_EVERY_S = 1.0  # job record and task-progress events, at most this often
# How long the coordinator's own Redis calls ride out a restart of Redis (AOF reload included)
# before the job's thread gives up; the orphan watcher sends a job so abandoned again.
REDIS_RETRY_S = 120.0

_current: "Coordinator | None" = None


def current() -> "Coordinator":
    if _current is None:
        raise RuntimeError("no coordinator in this process: `editbatch serve` runs the editbatch.job task")
    return _current


class Coordinator:
    def __init__(self, cluster_config: RunConfig, broker: str):
        global _current
        self.base = cluster_config
        self.settings = cluster_config.jobs
        self.ns = cluster_config.cluster.namespace
        self.broker = broker
        self.redis = redisconn.connect(broker)
        self.store = JobStore(self.redis, self.ns, retry_s=REDIS_RETRY_S)
        self.app = make_app(broker, task_events=cluster_config.cluster.task_events)
        self.queues = [d.queue for d in cluster_config.devices]
        self.roots = Roots.of(cluster_config.cluster.input_roots, cluster_config.cluster.output_roots)
        self.stopping = threading.Event()
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        _current = self

    def start(self) -> None:
        """Once consuming: publish the limits and start watching for jobs whose coordinator died."""
        self.store.publish_settings(max_queued=self.settings.max_queued, max_running=self.settings.max_running)
        threading.Thread(target=self._watch_orphans, name="editbatch-orphans", daemon=True).start()

    # ------------------------------------------------------------ one job

    def run_job(self, task, job_id: str, config: Any, priority: Any, v: Any) -> dict[str, Any]:
        check_kwargs(config, priority, v)
        if self.store.get(job_id) is None:
            try:
                self.store.create(job_id, config, priority=priority, max_queued=self.settings.max_queued, via="celery")
            except QueueFull as exc:
                raise JobFailed(str(exc)) from None
        record = self.store.get(job_id)
        if record["state"] in FINAL:
            return outcome(record)
        lease = Lease(self.redis, keys.job_lease(self.ns, job_id), f"{self.owner}:{threading.get_ident()}",
                      keys.JOB_LEASE_TTL_S)
        if not redisconn.retrying(lease.try_take, REDIS_RETRY_S):
            return outcome(self._wait_final(job_id))  # a second copy of the message: its owner is alive
        try:
            self.store.update(job_id, received_at=time.time())
            return self._own(task, job_id)
        finally:
            lease.release()

    def _own(self, task, job_id: str) -> dict[str, Any]:
        record = self.store.get(job_id)
        try:
            config = self.check(job_id, record["config"])
        except EditBatchError as exc:
            self.store.finish(job_id, "failed", error=str(exc))
            raise JobFailed(str(exc)) from None
        last_event = 0.0
        while record["state"] == "queued":
            if self.stopping.is_set():
                raise Reject("coordinator stopping; the job stays queued", requeue=True)
            if self.store.take_slot(job_id, self.settings.max_running):
                break
            if time.monotonic() - last_event > 5:
                last_event = time.monotonic()
                with contextlib.suppress(Exception):  # an event is best effort: Redis may be restarting
                    task.send_event("task-progress", job=job_id, state="queued", position=record.get("position"))
            time.sleep(QUEUE_POLL_S)
            record = self.store.get(job_id)
            if record["state"] in FINAL:
                return outcome(record)  # cancelled while queued
        record = self.store.get(job_id)
        resume = bool(record.get("started_at"))  # it ran under a coordinator that died: finish it
        run_id = uuid.uuid4().hex[:12]
        self.store.update(job_id, state="running", run_id=run_id, started_at=record.get("started_at") or time.time(),
                          attempts=int(record.get("attempts") or 0) + 1)
        if self._cancel_requested(job_id):
            redisconn.retrying(lambda: self.redis.set(keys.run_state(self.ns, run_id), "cancelled",
                                                      ex=keys.RUN_STATE_TTL_S), REDIS_RETRY_S)
        log.info("job %s: %s %s into %s", job_id, "resuming" if resume else "starting", config.name, config.output_dir)
        return self._execute(task, job_id, config, run_id, resume)

    def _execute(self, task, job_id: str, config: RunConfig, run_id: str, resume: bool) -> dict[str, Any]:
        from ..producer.run import Run, RunOptions
        from ..workers.switching import ensure_model

        progress = Progress(self.store, task, job_id)
        source = f"job {job_id}"
        try:
            switch = ensure_model(self.app, self.redis, self.ns, self.queues, config.model,
                                  timeout_s=config.cluster.ready_timeout_s,
                                  should_stop=lambda: self.stopping.is_set() or self._cancel_requested(job_id))
            self.store.update(job_id, switch=switch)
            if switch.get("stopped") and not self.stopping.is_set():
                raise RunCancelled("job cancelled")
            if switch.get("stopped"):
                raise RunCancelled("coordinator stopping")
            result = Run(config, source, RunOptions(resume=resume), None, run_id=run_id,
                         on_progress=progress.update, should_stop=self.stopping.is_set).execute()
        except RunCancelled:
            if self.stopping.is_set() and not self._cancel_requested(job_id):
                # Left running: the next coordinator resumes it from the same message.
                raise Reject("coordinator stopping; the job resumes at the next start", requeue=True) from None
            self.store.finish(job_id, "cancelled", counts=progress.counts, summary=read_summary(config.output_dir),
                              error="job cancelled; finished items are kept")
            raise JobFailed("job cancelled; finished items are kept", "cancelled") from None
        except EditBatchError as exc:
            self.store.finish(job_id, "failed", counts=progress.counts, error=str(exc))
            raise JobFailed(str(exc)) from None
        except Exception as exc:
            self.store.finish(job_id, "failed", counts=progress.counts, error=f"{exc.__class__.__name__}: {exc}")
            raise JobFailed(f"{exc.__class__.__name__}: {exc}") from None
        progress.flush()
        self.store.finish(job_id, "done", summary=result.summary, counts=progress.counts, exit_code=result.exit_code)
        return outcome(self.store.get(job_id))

    def check(self, job_id: str, data: dict[str, Any]) -> RunConfig:
        """The job's config as `editbatch run` would check it, run on the coordinator's cluster, inside its roots."""
        source = f"job {job_id}"
        data = {k: v for k, v in data.items() if k not in ("cluster", "jobs")}
        data["cluster"] = self.base.cluster.model_dump(mode="json")
        config = config_from_mapping(data, source)
        if not inside(config.dataset.path, self.roots.inputs):
            raise ConfigError(source, "dataset.path", f"{config.dataset.path} is outside the coordinator's input "
                                                      f"roots ({', '.join(self.roots.inputs)})")
        if not inside(config.output_dir, self.roots.outputs):
            raise ConfigError(source, "output_dir", f"{config.output_dir} is outside the coordinator's output "
                                                    f"roots ({', '.join(self.roots.outputs)})")
        return config

    def _cancel_requested(self, job_id: str) -> bool:
        return self.store.cancel_requested(job_id)

    def _wait_final(self, job_id: str) -> dict[str, Any]:
        while True:
            record = self.store.get(job_id)
            if record is None or record["state"] in FINAL:
                return record
            if self.stopping.is_set():
                raise Reject("coordinator stopping", requeue=False)  # the owner's own message remains
            time.sleep(QUEUE_POLL_S)

    # ------------------------------------------------------------ restarts

    def _watch_orphans(self) -> None:
        while not self.stopping.wait(ORPHAN_CHECK_S):
            try:
                self.resend_orphans()
            except redisconn.TRANSIENT:
                pass  # Redis restarting: next round

    def resend_orphans(self) -> list[str]:
        """Jobs a dead coordinator held (received, lease gone, not finished): send them again."""
        sent = []
        for job_id in self.store.unfinished():
            record = self.store.get(job_id)
            if not record or record["state"] in FINAL or not record.get("received_at"):
                continue
            lease_key = keys.job_lease(self.ns, job_id)
            if redisconn.retrying(lambda key=lease_key: self.redis.exists(key), REDIS_RETRY_S):
                continue
            self.store.update(job_id, received_at=None)
            self.app.send_task(TASK_NAME, task_id=job_id, queue=self.settings.queue,
                               kwargs={"config": record["config"], "priority": record.get("priority") or 0})
            log.info("job %s: its coordinator is gone; sent again to be resumed", job_id)
            sent.append(job_id)
        return sent


class Progress:
    """Counts of the running job into its record and a `task-progress` event, at most once a second."""

    def __init__(self, store: JobStore, task, job_id: str):
        # No waiting through a Redis restart: the next update, or the job's finish, writes the counts.
        self.store, self.task, self.job_id = JobStore(store.redis, store.ns), task, job_id
        self.counts: dict[str, int] | None = None
        self.sent_at = 0.0
        self.dirty = False

    def update(self, counts: dict[str, int]) -> None:
        self.counts, self.dirty = counts, True
        if time.monotonic() - self.sent_at >= PROGRESS_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if not self.dirty or self.counts is None:
            return
        self.sent_at, self.dirty = time.monotonic(), False
        try:
            self.store.update(self.job_id, counts=self.counts)
            self.task.send_event("task-progress", job=self.job_id, state="running", **self.counts)
        except Exception:  # noqa: BLE001 - progress is best effort; the run's own files are the record
            log.warning("job %s: progress not published", self.job_id, exc_info=True)


def outcome(record: dict[str, Any] | None) -> dict[str, Any]:
    """The task's result for a finished job: its summary, or JobFailed with the reason."""
    if record is None:
        raise JobFailed("job record vanished")
    if record["state"] == "done":
        return {**(record.get("summary") or {}), "job": record["id"], "output_dir": record.get("output_dir"),
                "state": "done"}
    raise JobFailed(record.get("error") or f"job {record['state']}", record["state"])


def read_summary(output_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(output_dir) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
