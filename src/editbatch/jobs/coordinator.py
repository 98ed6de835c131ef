"""The coordinator: takes jobs from the job store and runs them with the producer (`Run`) on warm workers.

One scheduler thread waits on the store (the wake-up list, or a rescan every
`SCAN_S`) and on each pass (every `PRUNE_EVERY_S` it first deletes the
records of jobs ended more than `jobs.keep_ended_days` ago):

1. renews the lease of every job this coordinator runs (one that another
   coordinator took over is stopped here);
2. takes over running jobs whose coordinator died (lease gone) and resumes
   them on their folder;
3. checks the config of each newly queued job (a bad one ends `failed` at
   once, with the one-line reason);
4. takes the head of the queue while a run slot is free. Jobs run side by
   side only when they use the same model: a job whose model differs from
   the running jobs' waits, in its place, until they have ended, and is then
   started after the workers switch (never under a running job).

Each running job has a thread of its own (runner.JobRun), at most
`jobs.max_running`; the threads do not grow with the length of the queue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from .. import liveness, redisconn, runstate
from ..celery_app import make_app
from ..config import RunConfig, config_from_mapping
from ..errors import ClusterError, ConfigError, EditBatchError
from ..models import identity
from ..workers.roots import Roots, inside, workers_refusing
from .celery_view import CeleryView, outcome
from .contract import JobFailed, check_kwargs
from .runner import JobRun
from .store import FINAL, JobStore, QueueFull

log = logging.getLogger("editbatch.jobs")

SCAN_S = 2.0  # longest wait between passes; well inside the job lease (keys.JOB_LEASE_TTL_S)
ADMIT_PER_PASS = 50  # new queued jobs checked per pass, so that a long queue never delays the leases
# How long the coordinator's own writes ride out a restart of Redis (AOF reload included).
REDIS_RETRY_S = 120.0
PRUNE_EVERY_S = 600.0  # how often ended job records older than jobs.keep_ended_days are deleted
STOP_JOIN_S = 50.0  # how long a stopping coordinator waits for its running jobs to stop (compose: 1 min)

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
        self.redis = redisconn.connect(broker)
        self.store = JobStore(self.redis, self.ns, retry_s=REDIS_RETRY_S)
        self.app = make_app(broker, task_events=cluster_config.cluster.task_events)
        self.view = CeleryView(self.app, self.settings.queue, events=cluster_config.cluster.task_events)
        self.queues = [d.queue for d in cluster_config.devices]
        self.roots = Roots.of(cluster_config.cluster.input_roots, cluster_config.cluster.output_roots)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()
        self.switch_lock = threading.Lock()
        self.active: dict[str, JobRun] = {}  # job id -> its thread, while it runs here
        self.lock = threading.Lock()  # guards `active`
        self.admitted: dict[str, tuple[RunConfig, str]] = {}  # queued job id -> checked config, model key
        self.waiting_logged: tuple[str, tuple[str, ...]] | None = None
        self.thread: threading.Thread | None = None
        self.pruned_at = 0.0
        _current = self

    # ------------------------------------------------------------ life

    def start(self) -> None:
        """Publish the limits (clients check admission against them) and start scheduling."""
        self.store.publish_settings(max_queued=self.settings.max_queued, max_running=self.settings.max_running,
                                    input_roots=list(self.roots.inputs), output_roots=list(self.roots.outputs),
                                    queues=self.queues)
        self.thread = threading.Thread(target=self._loop, name="editbatch-scheduler", daemon=True)
        self.thread.start()
        log.info("coordinator %s: taking jobs from the store (max_running %d, max_queued %d)", self.owner,
                 self.settings.max_running, self.settings.max_queued)

    def stop(self) -> None:
        """Stop taking jobs; running ones stop and stay `running` for the next coordinator to resume."""
        self.stopping.set()
        with contextlib.suppress(*redisconn.TRANSIENT):
            self.store.wake()  # the scheduler's wait returns now, not at the end of its slice
        if self.thread is not None:
            self.thread.join(SCAN_S * 2)
        with self.lock:
            runs = list(self.active.values())
        deadline = time.monotonic() + STOP_JOIN_S
        for run in runs:
            run.thread.join(max(0.0, deadline - time.monotonic()))

    def check_workers(self) -> None:
        """Refuse to serve when a live worker may not touch every folder this coordinator accepts jobs in."""
        refusing = workers_refusing(self._worker_records(), self.roots.inputs, self.roots.outputs)
        if refusing:
            raise ClusterError(
                f"the coordinator accepts jobs reading under {', '.join(self.roots.inputs)} and writing under "
                f"{', '.join(self.roots.outputs)}, but worker(s) {'; '.join(refusing)} may not: start the workers "
                "with the coordinator's config (editbatch worker --config CLUSTER.yaml --device N) or widen "
                "their cluster.input_roots / output_roots")

    def _worker_records(self) -> dict[str, dict | None]:
        return {q: seen.record for q, seen in liveness.look(self.redis, self.ns, self.queues).items()}

    def job_ended(self, job_id: str) -> None:
        with self.lock:
            self.active.pop(job_id, None)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.schedule_once()
                self.store.wait_for_change(SCAN_S, stop=self.stopping.is_set)
            except redisconn.TRANSIENT:
                self.stopping.wait(redisconn.RETRY_PAUSE_S)  # Redis restarting: the next pass tries again
            except Exception:  # noqa: BLE001 - the scheduler must outlive any one bad record
                log.exception("scheduler pass failed")
                self.stopping.wait(SCAN_S)

    def schedule_once(self) -> None:
        self.prune_ended()
        self.keep_leases()
        self.adopt_orphans()
        self.admit_new()
        self.start_next()

    # ------------------------------------------------------------ the Celery front door

    def accept(self, job_id: str, config: Any, priority: Any, v: Any) -> dict[str, Any] | None:
        """Queue a job sent as an `editbatch.job` task; the finished job's result if it ended already."""
        try:
            check_kwargs(config, priority, v)
            self.store.create(job_id, config, priority=priority, max_queued=self.settings.max_queued, via="celery")
        except QueueFull as exc:
            log.info("job %s: refused: %s", job_id, exc)
            raise JobFailed(str(exc)) from None
        except JobFailed as exc:
            log.info("job %s: refused: %s", job_id, exc)
            raise
        record = self.store.get(job_id)
        return outcome(record) if record["state"] in FINAL else None

    # ------------------------------------------------------------ the scheduler's steps

    def prune_ended(self) -> None:
        if time.monotonic() - self.pruned_at < PRUNE_EVERY_S and self.pruned_at:
            return
        self.pruned_at = time.monotonic()
        pruned = self.store.prune(self.settings.keep_ended_days * 86400)
        if pruned:
            log.info("deleted %d job record(s) that ended more than %g days ago", len(pruned),
                     self.settings.keep_ended_days)

    def keep_leases(self) -> None:
        with self.lock:
            runs = list(self.active.items())
        for job_id, run in runs:
            if not run.lost.is_set() and not self.store.keep_lease(job_id, self.owner):
                log.warning("job %s: its lease is held by another coordinator; stopping it here", job_id)
                run.lost.set()

    def adopt_orphans(self) -> None:
        for job_id in self.store.running():
            if self.stopping.is_set() or job_id in self.active:
                continue
            holder = self.store.lease_holder(job_id)
            if holder is not None and holder != self.owner:
                continue  # a live coordinator runs it
            record = self.store.get(job_id)
            if record is None or record["state"] != "running":
                continue
            config = self._check_or_fail(job_id, record)
            if config is None:
                continue
            previous, run_id = record.get("run_id"), new_run_id()
            if not self.store.claim(job_id, owner=self.owner, run_id=run_id):
                continue
            if previous:  # its tasks still queued must not run beside the resumed run's
                runstate.mark_cancelled(self.redis, self.ns, previous, if_known=True)
            log.info("job %s: its coordinator is gone; resuming it on %s", job_id, config.output_dir)
            self._launch(job_id, config, run_id, resume=True)

    def admit_new(self) -> None:
        """Check the config of jobs newly queued: accepted, or refused (ended `failed`) with the reason."""
        queued = self.store.queued()
        waiting = set(queued)
        for job_id in [j for j in self.admitted if j not in waiting]:
            self.admitted.pop(job_id)
            if job_id not in self.active:
                self._left_queue(job_id)
        for job_id in [j for j in queued if j not in self.admitted][:ADMIT_PER_PASS]:
            record = self.store.get(job_id)
            if record is None or record["state"] != "queued":
                continue
            config = self._check_or_fail(job_id, record)
            if config is None:
                continue
            key = identity.identity_hash(identity.model_identity(config.model))
            self.admitted[job_id] = (config, key)
            log.info("job %s: accepted (%s, %s, via %s, position %s)", job_id, config.name,
                     identity.describe(identity.model_identity(config.model)), record.get("via"),
                     record.get("position"))
            self.view.accepted(record)

    def start_next(self) -> None:
        """Take the head of the queue while a slot is free and its model matches the running jobs'."""
        while not self.stopping.is_set():
            head = self.store.head()
            if head is None:
                return
            if head not in self.admitted:
                return  # checked on the next pass
            config, key = self.admitted[head]
            active = self.active.get(head)
            # A job of ours back in the queue: Redis lost the last second of writes. Running it stays.
            run_id = active.run_id if active else new_run_id()
            answer = self.store.take(head, owner=self.owner, max_running=self.settings.max_running, model_key=key,
                                     run_id=run_id)
            if answer == "taken" and active is None:
                self.admitted.pop(head)
                self._launch(head, config, run_id, resume=self.store.get(head)["attempts"] > 1)
            elif answer == "other-model":
                self._log_waiting(head, config)
                return
            elif answer == "full":
                return

    # ------------------------------------------------------------ helpers

    def _launch(self, job_id: str, config: RunConfig, run_id: str, *, resume: bool) -> None:
        run = JobRun(self, job_id, config, run_id, resume=resume)
        with self.lock:
            self.active[job_id] = run
        run.start()

    def _check_or_fail(self, job_id: str, record: dict[str, Any]) -> RunConfig | None:
        try:
            return self.check(job_id, record.get("config"))
        except EditBatchError as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - a record nobody could read must not block the queue
            reason = f"job {job_id}: unreadable config ({exc.__class__.__name__}: {exc})"
        log.info("job %s: refused: %s", job_id, reason)
        self.view.accepted(record)  # Flower learns of it before it fails (jobs that came without Celery)
        self.store.finish(job_id, "failed", error=reason)
        self.view.ended(self.store.get(job_id))
        return None

    def _left_queue(self, job_id: str) -> None:
        """A job that left the queue without this coordinator taking it: cancelled, or taken elsewhere."""
        record = self.store.get(job_id)
        if record is not None and record["state"] == "cancelled":
            log.info("job %s: cancelled before it started", job_id)
            self.view.ended(record)

    def _log_waiting(self, head: str, config: RunConfig) -> None:
        running = tuple(self.store.running())
        if self.waiting_logged == (head, running):
            return
        self.waiting_logged = (head, running)
        with self.lock:
            models = {run.describe_model() for job_id, run in self.active.items() if job_id in running}
        log.info("job %s: waits for %s to end: it needs %s, the running job(s) use %s", head, ", ".join(running),
                 identity.describe(identity.model_identity(config.model)), ", ".join(sorted(models)) or "another")

    def check(self, job_id: str, data: dict[str, Any]) -> RunConfig:
        """The job's config as `editbatch run` would check it, run on the coordinator's cluster, inside its roots."""
        source = f"job {job_id}"
        if not isinstance(data, dict):
            raise ConfigError(source, None, "a job's config must be a mapping (a run config)")
        data = {k: v for k, v in data.items() if k not in ("cluster", "jobs")}
        data["cluster"] = self.base.cluster.model_dump(mode="json")
        config = config_from_mapping(data, source)
        if not inside(config.dataset.path, self.roots.inputs):
            raise ConfigError(source, "dataset.path", f"{config.dataset.path} is outside the coordinator's input "
                                                      f"roots ({', '.join(self.roots.inputs)})")
        if not inside(config.output_dir, self.roots.outputs):
            raise ConfigError(source, "output_dir", f"{config.output_dir} is outside the coordinator's output "
                                                    f"roots ({', '.join(self.roots.outputs)})")
        records = self._worker_records()
        for field, path, refusing in (
                ("dataset.path", config.dataset.path, workers_refusing(records, [config.dataset.path], [])),
                ("output_dir", config.output_dir, workers_refusing(records, [], [config.output_dir]))):
            if refusing:
                raise ConfigError(source, field, f"{path} is outside the roots of worker(s) {'; '.join(refusing)}")
        return config


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]
