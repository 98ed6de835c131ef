"""One run from config to files, as a list of named steps.

`Run.execute` reads as the run itself: check the items, prepare the output
folder (refusing to mix two runs, or carrying over a resumed one), start or
reach the workers, wait until every model is loaded, dispatch in rounds
(the first for every item, the next ones for retries), then write the
manifest, summary and run.json and stop what was started.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

from .. import keys, redisconn
from ..barrier import BatchBarrier
from ..celery_app import make_app, visibility_timeout
from ..config import RunConfig, dump_config, mask_password
from ..dataset import Item, check_items, load_dataset
from ..errors import EXIT_ITEMS_FAILED, EXIT_OK, ConfigError, RunCancelled
from ..models.identity import model_identity, shared_queue
from ..models.registry import get_model_class
from ..output_folder import create_output_dir
from ..scheduling import Assignment, make_policy
from ..scheduling.policies import batch_count, batch_size
from ..seeding import item_seed
from ..tasks.contract import EditTask
from ..workers.roots import check_run_paths, with_worker_roots
from . import resume
from .dispatch import Dispatcher
from .watch import RunWatch
from .inbox import ResultInbox
from .outputs import Manifest, manifest_record, write_json
from .progress import Progress
from ..report.after_run import write_report_after_run
from .readiness import wait_for_workers
from .submit import Submitter
from .summary import summarize

CANCEL_CHECK_S = 1.0
LIVE_WAIT_S = 120.0  # how long a new round waits for restarted workers to load


@dataclass
class RunResult:
    exit_code: int
    output_dir: Path
    summary: dict[str, Any]


@dataclass(frozen=True)
class RunOptions:
    strict: bool = False  # any invalid item is an error before anything runs
    resume: bool = False  # reuse what the output folder already holds, run the rest
    overwrite: bool = False  # delete an earlier run's files in the output folder first
    force: bool = False  # resume even if the model, seed or dataset differ


def prepare_items(config: RunConfig, source: str, *, strict: bool) -> list[Item]:
    model_cls = get_model_class(config.model.type)
    items = load_dataset(config.dataset.path, config.dataset.format, config.dataset.limit, source=source)
    check_items(items, max_images=model_cls.max_images, max_pixels=config.dataset.max_pixels)
    check_run_paths(config, items, source)
    bad = [i for i in items if not i.valid]
    if strict and bad:
        listing = "; ".join(f"{i.id}: {i.error}" for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise ConfigError(str(config.dataset.path), "items", f"{len(bad)} invalid item(s) with --strict: {listing}")
    return items


def execute(config: RunConfig, *, source: str, options: RunOptions = RunOptions(),
            stream: TextIO | None = None) -> RunResult:
    return Run(config, source, options, stream).execute()


Counts = dict[str, int]  # items total, ok, failed, invalid, pending


class Run:
    def __init__(self, config: RunConfig, source: str, options: RunOptions, stream: TextIO | None, *,
                 run_id: str | None = None, on_progress: Callable[[Counts], None] | None = None,
                 should_stop: Callable[[], bool] | None = None):
        """`run_id`, `on_progress` and `should_stop` let a caller (the job coordinator) name the run
        beforehand, follow its counts as items finish, and stop it for a reason of its own."""
        self.config = config
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.source = source
        self.options = options
        self.sched = config.schedule
        self.ns = config.cluster.namespace
        self.devices = [d.queue for d in config.devices]
        self.model_id = model_identity(config.model)
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.progress = Progress(self.sched.mode, 0, self.devices, stream=stream)
        self.stream = stream
        self.failures: list[tuple[str, str]] = []
        self.attempts: dict[int, int] = {}  # item index -> attempts made by this run
        self.errors: dict[int, list[str]] = {}  # item index -> errors of its failed attempts, earlier runs too
        self.to_retry: list[Item] = []
        self.interrupted: str | None = None  # why the run stopped early: Ctrl-C or `editbatch cancel`
        self.dispatcher: Dispatcher | None = None
        self.cluster = None  # the local cluster, with broker: auto

    # ------------------------------------------------------------ the steps

    def execute(self) -> RunResult:
        self.check_items()
        self.prepare_folder()
        self.progress.say(f"[editbatch] Run {self.run_id}: output folder {self.out_dir} "
                          f"(editbatch status {self.out_dir})")
        with contextlib.ExitStack() as stack:
            broker, check_alive = self.start_cluster(stack)
            self.broker = broker
            self.redis = redisconn.connect(broker)
            stack.callback(self.redis.close)
            self.await_workers(check_alive)  # before the ledger: a run that never started leaves no trace
            self.open_ledger()
            if self.cluster is not None:
                self.cluster.watch()
            try:
                self.dispatch(broker)
            except KeyboardInterrupt:
                self.interrupted = "run interrupted"
                raise
            except RunCancelled:
                self.interrupted = "run cancelled"
                raise
            finally:
                self.finish()
        return self.report()

    def check_items(self) -> None:
        self.items = prepare_items(self.config, self.source, strict=self.options.strict)
        self.valid = [i for i in self.items if i.valid]
        self.seeds = {i.index: item_seed(self.sched.seed, i.id) for i in self.items}

    def prepare_folder(self) -> None:
        """Create the folder; refuse to mix two runs in it; on resume, find what is already done."""
        opts = self.options
        self.out_dir = create_output_dir(self.config.output_dir, self.source)
        self.previous = resume.check_folder(self.out_dir, self.config, self.source, resume=opts.resume,
                                            overwrite=opts.overwrite, force=opts.force)
        self.carried = (resume.carry_over(self.out_dir, self.items, self.seeds, self.model_id)
                        if opts.resume else resume.Carried())
        for index, old in self.carried.history.items():
            self.errors[index] = list(old.get("errors") or ([old["error"]] if old.get("error") else []))
        self.todo = [i for i in self.valid if i.index not in self.carried.done]
        self.resolved = self.out_dir / "config.resolved.yaml"
        private = self.config.cluster.broker == "auto"
        # Absolute paths: `editbatch resume DIR` works from any folder.
        written = self.config.model_copy(update={
            "output_dir": self.out_dir,
            "dataset": self.config.dataset.model_copy(update={"path": Path(self.config.dataset.path).resolve()})})
        # Private workers read this file: it carries their roots (the run's folder and its inputs).
        written = with_worker_roots(written, self.out_dir, self.items) if private else written
        self.resolved.write_text(dump_config(written, redact=True), encoding="utf-8")

    def start_cluster(self, stack: contextlib.ExitStack) -> tuple[str, Callable[[], None] | None]:
        if self.config.cluster.broker != "auto":
            return self.config.cluster.broker, None
        from ..cluster.local import LocalCluster

        self.cluster = stack.enter_context(LocalCluster(
            self.resolved, self.config.devices, self.out_dir / "logs", namespace=self.ns,
            restarts=self.config.cluster.restarts, say=lambda text: self.progress.say(text)))
        return self.cluster.start(), self.cluster.check_alive

    def await_workers(self, check_alive) -> None:
        """Unified start: block until every device's worker has loaded the model; record them in workers.json."""
        say, config = self.progress.say, self.config
        say(f"[editbatch] Waiting for {len(self.devices)} worker(s) to load {config.model.type} "
            f"(load_concurrency={config.cluster.load_concurrency})")
        records = wait_for_workers(self.redis, self.ns, self.devices, timeout_s=config.cluster.ready_timeout_s,
                                   model=self.model_id, check_alive=check_alive)
        write_json(self.out_dir / "workers.json", [
            {k: r.get(k) for k in ("device", "queue", "host", "pid", "worker", "model", "load", "load_started_at",
                                    "load_finished_at", "ready_at")} for r in records.values()])
        loads = [(r["load_started_at"], r["load_finished_at"]) for r in records.values()]
        say(f"[editbatch] All workers ready: models loaded in "
            f"{max(e for _, e in loads) - min(s for s, _ in loads):.2f}s (staggered)")

    def open_ledger(self) -> None:
        """Mark the run as running (and earlier runs of this folder as over); start the manifest."""
        earlier = [r for r in (self.previous or {}).get("runs", []) if keys.RUN_ID.match(str(r))]
        for run_id in earlier:
            # Their tasks still queued somewhere must not run next to ours.
            self.redis.set(keys.run_state(self.ns, run_id), "cancelled", xx=True, ex=keys.RUN_STATE_TTL_S)
        # nx: a run cancelled before it got here (a job cancelled while starting) stays cancelled.
        self.redis.set(keys.run_state(self.ns, self.run_id), "running", ex=keys.RUN_STATE_TTL_S, nx=True)
        self.started_at = time.time()
        self.run_file = {
            "run_id": self.run_id, "name": self.config.name, "state": "running", "started_at": self.started_at,
            "finished_at": None, "pid": os.getpid(), "host": socket.gethostname(),
            "cwd": os.getcwd(),  # the manifest's relative input paths are relative to it
            "namespace": self.ns, "broker": mask_password(self.broker),
            "broker_auto": self.config.cluster.broker == "auto",
            "mode": self.sched.mode, "devices": self.devices, "items": len(self.items),
            "valid_items": len(self.valid),
            "reused": len(self.carried.done), "identity": resume.identity(self.config),
            "runs": earlier + [self.run_id],
        }
        write_json(self.out_dir / resume.RUN_FILE, self.run_file)
        self.manifest = Manifest(self.out_dir)
        for item in self.items:
            if not item.valid:
                self.manifest.add(manifest_record(item, self.seeds[item.index]))
            elif item.index in self.carried.done:
                self.manifest.add(self.carried.done[item.index])
        self.report_progress()

    def counts(self) -> Counts:
        final = [r for r in self.manifest.records.values() if not r.get("retrying")]
        ok, failed, invalid = (sum(1 for r in final if r.get("status") == s) for s in ("ok", "failed", "invalid"))
        return {"total": len(self.items), "ok": ok, "failed": failed, "invalid": invalid,
                "pending": len(self.items) - ok - failed - invalid}

    def report_progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.counts())

    def dispatch(self, broker: str) -> None:
        """Round 0 sends every item still to do; each later round retries what failed, on live devices."""
        g, batched = len(self.devices), self.sched.mode in ("sync", "window")
        self.progress = Progress(self.sched.mode, len(self.todo), self.devices, stream=self.stream,
                                 batches=batch_count(len(self.todo), g) if batched else None, batch_size=g)
        self.announce()
        self.inbox = ResultInbox(self.redis, keys.results(self.ns, self.run_id))
        app = make_app(broker, task_events=self.config.cluster.task_events,
                       visibility_timeout_s=visibility_timeout(self.config))
        self.submitter = Submitter(app, self.payload_for)
        self.submitter.connect()  # before the clock starts: connection set-up is not per-run dispatch cost
        self.dispatch_started_at = time.time()
        self.progress.start()
        self.watch = RunWatch(self.redis, self.ns, self.run_id, self.out_dir, seeds=self.seeds,
                              ids={i.index: i.id for i in self.items}, model=self.model_id,
                              shared=shared_queue(self.model_id))
        live, items, self.round = list(self.devices), self.todo, 0
        while items:
            self.dispatch_round(items, live)
            items, self.to_retry = self.to_retry, []
            if not items:
                break
            live = self.live_devices()
            if not live:
                for item in items:
                    self.give_up(item, "no live worker left to run it on")
                break
            self.round += 1
            self.progress.say(f"Round {self.round + 1}: {len(items)} item(s) again on {len(live)} device(s) "
                              f"({', '.join(live)}; schedule.retries={self.sched.retries})")

    def live_devices(self) -> list[str]:
        """Devices whose worker serves now; waits a while for restarted workers to finish loading."""
        deadline = time.monotonic() + LIVE_WAIT_S
        while True:
            try:
                presence = self.watch.presence(self.devices)
            except redisconn.TRANSIENT:
                presence = {}
            live = [d for d in self.devices if presence.get(d)]
            if live and (len(live) == len(self.devices) or not self.restarting()) or time.monotonic() > deadline:
                return live
            time.sleep(1.0)

    def restarting(self) -> bool:
        """A worker of the local cluster is being started again (it rejoins when loaded)."""
        return self.cluster is not None and self.cluster.restarting()

    def finish(self) -> None:
        """Account for every item, end the run in Redis, write the manifest, summary and run.json."""
        self.progress.close()
        why = self.interrupted or "run ended"
        if self.dispatcher is not None:
            for ordinal in sorted(self.dispatcher.outstanding):
                self.give_up(self.round_items[ordinal], f"{why} before this item finished")
        for item in self.to_retry:
            self.give_up(item, f"{why} before this item was retried")
        for item in self.todo:
            if item.index not in self.manifest.records:
                self.give_up(item, f"{why} before this item was sent")
        ordered = self.manifest.finalize()
        state = "cancelled" if self.interrupted else "ended"
        self.end_run_in_redis(state)
        round0 = {i.index: k for k, i in enumerate(self.todo)}
        self.summary = summarize(
            ordered, mode=self.sched.mode, devices=self.devices, ordinal_of=round0,
            dispatch_started_at=getattr(self, "dispatch_started_at", time.time()),
            policy_factory=lambda: self.make_policy(len(self.todo), self.devices),
            extra={"name": self.config.name, "run_id": self.run_id, "model": self.model_id,
                   "max_skew": self.sched.max_skew if self.sched.mode == "window" else None,
                   "retries": self.sched.retries, "started_at": getattr(self, "dispatch_started_at", None),
                   "finished_at": time.time()})
        write_json(self.out_dir / "summary.json", self.summary)
        if hasattr(self, "run_file"):
            self.run_file.update(state=state, finished_at=time.time())
            write_json(self.out_dir / resume.RUN_FILE, self.run_file)

    def report(self) -> RunResult:
        summary, say = self.summary, self.progress.say
        invalid = [(i.id, i.error) for i in self.items if not i.valid]
        eff = summary["efficiency"]
        reused = f", {summary['reused']} reused" if summary.get("reused") else ""
        say(f"Batch edit completed: {summary['ok']} ok, {summary['failed']} failed, {summary['invalid']} invalid"
            f"{reused} in {summary['makespan_s']:.2f}s"
            + (f" (efficiency {eff:.3f}, lower bound {summary['lower_bound_s']:.2f}s)" if eff else ""))
        for item_id, error in invalid + self.failures:
            say(f"  {item_id}: {error}")
        write_report_after_run(self.out_dir, say)
        say(f"Outputs: {self.out_dir}")
        code = EXIT_OK if not invalid and not self.failures else EXIT_ITEMS_FAILED
        return RunResult(code, self.out_dir, summary)

    # ------------------------------------------------------------ one round

    def make_policy(self, n: int, devices: list[str], lookahead: int = 0):
        return make_policy(self.sched.mode, n, devices, shared_queue(self.model_id), max_skew=self.sched.max_skew,
                           max_in_flight=self.sched.max_in_flight, lookahead=lookahead,
                           depth=self.config.cluster.prefetch + 1)

    @property
    def worker_barrier(self) -> bool:
        return self.sched.mode == "sync" and self.sched.barrier == "worker"

    def dispatch_round(self, items: list[Item], devices: list[str]) -> None:
        self.round_items = items
        self.policy = self.make_policy(len(items), devices, lookahead=1 if self.worker_barrier else 0)
        self.dispatcher = Dispatcher(self.policy, self.submitter, self.inbox, index_of=[i.index for i in items],
                                     task_timeout_s=self.sched.task_timeout_s, on_result=self.on_result,
                                     device_queues=devices, watch=self.watch, should_stop=self.cancel_requested(),
                                     on_device_lost=self.device_lost, on_check=self.repair_barrier)
        self.dispatcher.run()

    def barrier(self, batch: int) -> BatchBarrier:
        prefix = f"{keys.barrier_prefix(self.ns, self.run_id)}:{self.round}"
        return BatchBarrier(prefix, batch, self.policy.batch_size(batch), self.policy.batch_size(batch + 1))

    def payload_for(self, a: Assignment, now: float) -> dict[str, Any]:
        item = self.round_items[a.ordinal]
        if a.batch is not None and self.round == 0:
            self.progress.track_batch(a.batch, batch_size(len(self.round_items), len(self.devices), a.batch))
        sync_point = {}
        if self.worker_barrier:
            sync_point = {"wait_for": self.barrier(a.batch - 1).to_dict() if a.batch else None,
                          "arrive_at": self.barrier(a.batch).to_dict(),
                          "wait_timeout_s": 2 * self.sched.task_timeout_s}
        return EditTask(**sync_point, id=item.id, images=[str(p.resolve()) for p in item.images],
                        instruction=item.instruction, output_dir=str(self.out_dir), seed=self.seeds[item.index],
                        index=item.index, batch=a.batch, params={**self.config.model.params,
                                                                 **(item.extra.get("params") or {})},
                        model=self.model_id, run=self.run_id, report=self.inbox.key, submitted_at=now,
                        timeout_s=self.sched.task_timeout_s).to_payload()

    def on_result(self, ordinal: int, result: dict[str, Any]) -> None:
        item = self.round_items[ordinal]
        result.setdefault("submitted_at", self.submitter.submitted_at.get(ordinal))
        if self.sched.mode not in ("sync", "window"):
            result["batch"] = None
        if result.get("lost") and self.worker_barrier and result.get("batch") is not None:
            self.barrier(result["batch"]).arrive(self.redis, item.index)  # count the lost task in, or successors wait
        if not self.record(item, result):
            self.progress.item_done(result.get("batch") if self.round == 0 else None, result.get("device"),
                                    result.get("started_at"), result.get("finished_at"))
        self.report_progress()

    def record(self, item: Item, result: dict[str, Any]) -> bool:
        """Put one attempt's result in the manifest; True if the item failed and will be retried."""
        if result.get("lost") and not result.get("started"):
            # Queued on, or held by, a worker that went away before starting it: not an attempt.
            self.to_retry.append(item)
            return True
        attempts = self.attempts[item.index] = self.attempts.get(item.index, 0) + 1
        errors = self.errors.setdefault(item.index, [])
        failed = result.get("status") != "ok"
        if failed:
            errors.append(result.get("error") or "failed")
        retry = failed and not self.interrupted and attempts <= self.sched.retries
        record = manifest_record(item, self.seeds[item.index], result)
        record.update(round=self.round, attempts=attempts, errors=list(errors), reused=bool(result.get("reused")))
        if retry:
            record["retrying"] = True  # superseded by the retry's record; a resume reads it as failed
            self.to_retry.append(item)
        elif failed:
            self.failures.append((item.id, record["error"] or "failed"))
        self.manifest.add(record)
        return retry

    def give_up(self, item: Item, error: str) -> None:
        """Close an item that will not run (again): keep its last failure, or record `error`."""
        last = self.manifest.records.get(item.index)
        if last is not None and last.get("retrying"):
            record = {k: v for k, v in last.items() if k != "retrying"}
        else:
            record = manifest_record(item, self.seeds[item.index], {"status": "failed", "error": error})
            record.update(round=self.round, attempts=self.attempts.get(item.index, 0),
                          errors=self.errors.get(item.index, []) + [error], reused=False)
        self.failures.append((item.id, record["error"] or error))
        self.manifest.add(record)

    def device_lost(self, queue: str, remaining: int) -> None:
        """Say that a device left (remaining > 0) or came back (remaining < 0, negated)."""
        n = abs(remaining)
        self.progress.say(f"{queue} {'lost' if remaining >= 0 else 'back'}: continuing with {n} "
                          f"device{'s' if n != 1 else ''}")

    def repair_barrier(self) -> None:
        """Sync mode: open the barrier behind the oldest outstanding batch, had a Redis restart lost arrivals."""
        if not self.worker_barrier or not self.dispatcher.outstanding:
            return
        oldest = min(a.batch for a in self.dispatcher.outstanding.values())
        if oldest:
            try:
                self.barrier(oldest - 1).force_open(self.redis, [i.index for i in self.round_items[
                    (oldest - 1) * self.policy.size:oldest * self.policy.size]])
            except redisconn.TRANSIENT:
                pass

    def cancel_requested(self) -> Callable[[], bool]:
        """True once `editbatch cancel` marked this run cancelled (asked at most once a second)."""
        state = {"at": 0.0}

        def check() -> bool:
            if self.should_stop is not None and self.should_stop():
                return True
            if time.monotonic() - state["at"] < CANCEL_CHECK_S:
                return False
            state["at"] = time.monotonic()
            try:
                return self.redis.get(keys.run_state(self.ns, self.run_id)) == b"cancelled"
            except redisconn.TRANSIENT:
                return False

        return check

    def end_run_in_redis(self, state: str) -> None:
        """Mark the run over (workers skip its leftover tasks) and drop its inbox and barrier keys.

        Both also expire on their own, so a failure here is harmless.
        """
        try:
            self.redis.set(keys.run_state(self.ns, self.run_id), state, ex=keys.RUN_STATE_TTL_S)
            found = list(self.redis.scan_iter(match=keys.run_prefix(self.ns, self.run_id) + "*", count=1000))
            if found:
                self.redis.delete(*found)
        except Exception:  # noqa: BLE001 - the broker may be what failed; the run's files come first
            pass

    def announce(self) -> None:
        """The seed's banner and task-assignment table."""
        sched, devices, todo = self.sched, self.devices, self.todo
        g = len(devices)
        if self.carried.done:
            self.progress.say(f"[editbatch] Resuming: {len(self.carried.done)} item(s) already done are reused, "
                              f"{len(todo)} to run")
        self.progress.banner(f"{self.config.model.type}: {self.config.model.path}", len(todo),
                             len(self.items) - len(self.valid),
                             f", max_skew={sched.max_skew}" if sched.mode == "window" else "")
        per_device = None
        if sched.mode in ("sync", "nosync"):
            per_device = {d: [v.index for v in todo[k::g]] for k, d in enumerate(devices)}
        self.progress.assignment(per_device, in_flight=(sched.max_skew + 1) * g if sched.mode == "window"
                                 else g * (self.config.cluster.prefetch + 1))
