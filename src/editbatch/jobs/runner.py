"""One job on the warm workers, in a thread of the coordinator: switch the model, run, record the outcome.

The job is already `running` in the store under this coordinator's lease
(`JobStore.take` or `claim`). The thread makes the workers hold the job's
model, runs the producer on the job's folder (resuming it when an earlier
attempt was cut off), and writes the job's end. It stops early when the job
is cancelled, when the coordinator stops (the job stays `running` and the
next coordinator resumes it) or when another coordinator took the job over.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import layout, liveness, redisconn
from ..config import RunConfig
from ..errors import EditBatchError, RunCancelled
from ..models import identity
from .store import JobStore

if TYPE_CHECKING:
    from .coordinator import Coordinator

log = logging.getLogger("editbatch.jobs")

PROGRESS_EVERY_S = 1.0  # job record and task-progress events, at most this often
WORKER_POLL_S = 0.5


class JobRun:
    def __init__(self, coordinator: "Coordinator", job_id: str, config: RunConfig, run_id: str, *, resume: bool):
        self.co = coordinator
        self.job_id = job_id
        self.config = config
        self.run_id = run_id  # this attempt's run, named when the job was taken
        self.resume = resume
        self.lost = threading.Event()  # set when another coordinator holds the job's lease
        self.ended = False  # its end is written
        self.thread = threading.Thread(target=self._main, name=f"editbatch-job-{job_id}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def describe_model(self) -> str:
        return identity.describe(identity.model_identity(self.config.model))

    def should_stop(self) -> bool:
        return self.co.stopping.is_set() or self.lost.is_set()

    def _main(self) -> None:
        store = self.co.store
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - a job's end must be recorded whatever went wrong
            log.exception("job %s: failed in the coordinator", self.job_id)
            if not self.ended:
                self._end("failed", error=f"{exc.__class__.__name__}: {exc}")
        finally:
            try:
                store.release(self.job_id, self.co.owner)
            except redisconn.TRANSIENT:
                pass  # the lease runs out on its own
            self.co.job_ended(self.job_id)

    def _run(self) -> None:
        co, job_id, config, run_id = self.co, self.job_id, self.config, self.run_id
        record = co.store.get(job_id)
        if co.store.cancel_requested(job_id):  # cancelled while its coordinator was gone
            self._end("cancelled", counts=record.get("counts"), summary=read_summary(config.output_dir),
                      error="job cancelled; finished items are kept")
            return
        progress = Progress(co, record)
        co.view.started(record)
        try:
            self._switch_model()
            log.info("job %s: %s %s into %s (run %s)", job_id, "resuming" if self.resume else "starting",
                     config.name, config.output_dir, run_id)
            from ..producer.run import Run, RunOptions

            result = Run(config, f"job {job_id}", RunOptions(resume=self.resume), None, run_id=run_id,
                         on_progress=progress.update, should_stop=self.should_stop).execute()
        except RunCancelled:
            if self.lost.is_set():
                log.warning("job %s: another coordinator took it over; stopped here", job_id)
            elif co.stopping.is_set() and not co.store.cancel_requested(job_id):
                log.info("job %s: coordinator stopping; left running, to be resumed at the next start", job_id)
            else:
                self._end("cancelled", counts=progress.counts, summary=read_summary(config.output_dir),
                          error="job cancelled; finished items are kept")
            return
        except EditBatchError as exc:
            self._end("failed", counts=progress.counts, error=str(exc))
            return
        progress.flush()
        self._end("done", summary=result.summary, counts=progress.counts, exit_code=result.exit_code)

    def _await_workers(self) -> None:
        """Workers (re)started with the coordinator get `cluster.ready_timeout_s` to show up."""
        co, logged = self.co, False
        deadline = time.monotonic() + self.config.cluster.ready_timeout_s
        while time.monotonic() < deadline:
            try:
                absent = [q for q, seen in liveness.look(co.redis, co.ns, co.queues).items() if seen.record is None]
            except redisconn.TRANSIENT:
                absent = co.queues
            if not absent:
                return
            if self.should_stop() or co.store.cancel_requested(self.job_id):
                raise RunCancelled("stopped while waiting for workers")
            if not logged:
                log.info("job %s: waits for the workers of %s to start", self.job_id, ", ".join(absent))
                logged = True
            time.sleep(WORKER_POLL_S)
        # ensure_model names the workers still missing

    def _switch_model(self) -> None:
        """Make every worker hold the job's model; only one job thread switches at a time."""
        from ..workers.switching import ensure_model

        self._await_workers()
        co, model = self.co, self.config.model
        with co.switch_lock:
            switch = ensure_model(co.app, co.redis, co.ns, co.queues, model,
                                  timeout_s=self.config.cluster.ready_timeout_s,
                                  should_stop=lambda: self.should_stop() or co.store.cancel_requested(self.job_id))
        co.store.update(self.job_id, switch=switch)
        if switch.get("stopped"):
            raise RunCancelled("model switch stopped")
        if switch["switched"]:
            log.info("job %s: switched %s to %s (%s) in %.1fs", self.job_id, ", ".join(switch["switched"]),
                     self.describe_model(), "/".join(switch.get("load") or []), switch["seconds"])

    def _end(self, state: str, **fields: Any) -> None:
        if self.lost.is_set():
            return  # its new owner writes the end
        store = self.co.store
        written = store.finish(self.job_id, state, run_id=self.run_id, **fields)
        self.ended = True
        if not written:
            log.warning("job %s: taken over by another coordinator; its end is not written here", self.job_id)
            return
        record = store.get(self.job_id)
        counts = record.get("counts") or {}
        said = ", ".join(f"{counts[k]} {k}" for k in ("ok", "failed", "invalid", "not_run") if k in counts)
        log.info("job %s: %s%s%s", self.job_id, state, f" ({said} of {counts.get('total')})" if counts else "",
                 f": {record['error']}" if state != "done" and record.get("error") else "")
        try:
            self.co.view.ended(record)
        except redisconn.TRANSIENT:
            log.warning("job %s: its Celery result was not stored (Redis unreachable)", self.job_id)


class Progress:
    """Counts of the running job into its record and a `task-progress` event, at most once a second.

    The counts are whatever the producer reports (`total`, `ok`, `failed`, `invalid`, `pending`, ...).
    """

    def __init__(self, coordinator: "Coordinator", record: dict[str, Any]):
        # No waiting through a Redis restart: the next update, or the job's end, writes the counts.
        self.store = JobStore(coordinator.redis, coordinator.ns)
        self.view, self.record = coordinator.view, record
        self.counts: dict[str, Any] | None = record.get("counts")
        self.sent_at = 0.0
        self.dirty = False

    def update(self, counts: dict[str, Any]) -> None:
        self.counts, self.dirty = dict(counts), True
        if time.monotonic() - self.sent_at >= PROGRESS_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if not self.dirty or self.counts is None:
            return
        self.sent_at, self.dirty = time.monotonic(), False
        try:
            self.store.update(self.record["id"], counts=self.counts)
        except redisconn.TRANSIENT:
            log.warning("job %s: progress not recorded (Redis unreachable)", self.record["id"])
            return
        self.view.progress(self.record, self.counts)


def read_summary(output_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(output_dir) / layout.SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None

