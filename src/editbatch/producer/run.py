"""One run from config to files, as a list of named steps.

`Run.execute` reads as the run itself: make the plan (check the items, take
the output folder, find what an earlier run finished), start or reach the
workers, wait until every model is loaded, open the run's files, dispatch in
rounds (the first for every item, the next ones for retries), then close
every item, end the run in Redis and write the manifest, summary and run.json.
Each step hands the next what it needs.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

from redis.exceptions import ResponseError

from .. import clock, counts, keys, layout, redisconn, runstate
from ..celery_app import make_app, visibility_timeout
from ..config import RunConfig, mask_password
from ..dataset import where
from ..errors import EXIT_ITEMS_FAILED, EXIT_OK, ClusterError, EditBatchError, RunCancelled
from ..models.identity import shared_queue
from ..report.after_run import write_report_after_run
from ..scheduling import make_policy, metrics, policy_class
from ..scheduling.policies import queue_depth
from . import resume
from .cluster import ClusterHandle, start_cluster
from .inbox import ResultInbox
from .outputs import write_json
from .plan import Plan, RunOptions, make_plan, prepare_items
from .progress import Progress
from .readiness import wait_for_workers
from .recorder import Recorder
from .rounds import OutputsUnwritable, Round, RunContext
from .submit import Submitter
from .summary import summarize
from .watch import RunWatch

__all__ = ["Run", "RunOptions", "RunResult", "execute", "prepare_items"]

CANCEL_CHECK_S = 1.0
LIVE_WAIT_S = 120.0  # how long a new round waits for restarted workers to load


@dataclass
class RunResult:
    exit_code: int
    output_dir: Path
    summary: dict[str, Any]


def execute(config: RunConfig, *, source: str, options: RunOptions | None = None,
            stream: TextIO | None = None) -> RunResult:
    return Run(config, source, options or RunOptions(), stream).execute()


class Run:
    def __init__(self, config: RunConfig, source: str, options: RunOptions, stream: TextIO | None, *,
                 run_id: str | None = None, on_progress: Callable[[dict[str, int]], None] | None = None,
                 should_stop: Callable[[], bool] | None = None):
        """`run_id`, `on_progress` and `should_stop` let a caller (the job coordinator) name the run
        beforehand, follow its counts as items finish, and stop it for a reason of its own."""
        self.config = config
        self.source = source
        self.options = options
        self.stream = stream
        self.run_id = run_id
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.facts = policy_class(config.schedule.mode)
        self.devices = [d.queue for d in config.devices]
        self.progress = Progress(config.schedule.mode, 0, self.devices, stream=stream)
        self.stopped: str | None = None  # why the run stopped early: Ctrl-C, `editbatch cancel`, a full disk
        self.judged: dict[str, dict] | None = None  # the judge feed's records, when the run asks a judge

    @property
    def ns(self) -> str:
        return self.config.cluster.namespace

    # ------------------------------------------------------------ the steps

    def execute(self) -> RunResult:
        plan = make_plan(self.config, self.source, self.options, self.run_id)
        try:
            return self._execute(plan)
        except KeyboardInterrupt:
            # Outside the cluster's context: it has stopped what it started, at once (Ctrl-C is not a warm stop).
            raise RunCancelled(f"interrupted: the processes this run started were stopped, finished items are "
                               f"kept; finish it with: editbatch resume {plan.out_dir}") from None
        except RunCancelled as exc:
            raise RunCancelled(f"{exc}; finish it with: editbatch resume {plan.out_dir}") from None

    def _execute(self, plan: Plan) -> RunResult:
        with contextlib.ExitStack() as stack:
            stack.callback(plan.lock.release)
            if self.options.only_failed and not plan.todo:
                self.progress.say(f"[editbatch] Nothing to retry in {plan.out_dir}: no item failed")
                return RunResult(EXIT_OK, plan.out_dir, _read_summary(plan.out_dir))
            self.progress.say(f"[editbatch] Run {plan.run_id}: output folder {plan.out_dir} "
                              f"(editbatch status {plan.out_dir})")
            cluster = start_cluster(self.config, plan, stack, self.progress.say)
            redis = redisconn.connect(cluster.broker)
            stack.callback(redis.close)
            self.await_workers(plan, cluster, redis)  # before the ledger: a run that never started leaves no trace
            recorder, run_file = self.open_ledger(plan, cluster, redis)
            feed = self.open_judge_feed(plan, cluster, recorder, redis)
            if feed is not None:
                # Stopped early: collecting ends; the run's queued judge items are skipped once it is over.
                stack.callback(feed.close, wait=False)
            cluster.watch()
            dispatch_started_at = time.time()
            rounds: list[Round] = []
            try:
                self.dispatch(plan, cluster, redis, recorder, rounds)
            except KeyboardInterrupt:
                self.stopped = "run interrupted"
                raise
            except RunCancelled:
                self.stopped = "run cancelled"
                raise
            except OutputsUnwritable as exc:
                self.stopped = "outputs could not be written"
                raise EditBatchError(str(exc)) from None
            except (ResponseError, redisconn.WritesRefused) as exc:
                if not redisconn.refuses_writes(exc):
                    raise
                self.stopped = "Redis refused writes"
                raise ClusterError(f"Redis refuses writes ({str(exc)[:120]}): its disk is full; run stopped, "
                                   f"finished items are kept: free space, then editbatch resume {plan.out_dir}"
                                   ) from None
            finally:
                if feed is not None and not self.stopped:
                    feed.close(wait=True, say=self.progress.say)
                summary = self.finish(plan, redis, recorder, run_file, rounds, dispatch_started_at)
        return self.report(plan, recorder, summary)

    def open_judge_feed(self, plan: Plan, cluster: ClusterHandle, recorder: Recorder, redis):
        """The judge workers, fed as each edit is committed (and with the items an earlier run finished)."""
        from ..scores.judge.feed import open_feed

        app = make_app(cluster.broker, task_events=self.config.cluster.task_events)
        feed = open_feed(self.config, plan.out_dir, redis, app, plan.run_id, lambda m: self.progress.say(m))
        if feed is not None:
            self.judged = feed.done
            by_index = {item.index: item for item in plan.items}
            for index, record in plan.carried.done.items():
                feed.submit(by_index[index], record)
            recorder.on_ok = feed.submit
        return feed

    def await_workers(self, plan: Plan, cluster: ClusterHandle, redis) -> None:
        """Unified start: block until every device's worker has loaded the model; record them in workers.json."""
        say, config = self.progress.say, self.config
        say(f"[editbatch] Waiting for {len(self.devices)} worker(s) to load {config.model.type} "
            f"(load_concurrency={config.cluster.load_concurrency})")
        records = wait_for_workers(redis, self.ns, self.devices, timeout_s=config.cluster.ready_timeout_s,
                                   model=plan.model_id, check_alive=cluster.check_alive)
        write_json(plan.out_dir / layout.WORKERS, [
            {k: r.get(k) for k in ("device", "queue", "host", "pid", "worker", "model", "load", "load_started_at",
                                    "load_finished_at", "ready_at")} for r in records.values()])
        loads = [(r["load_started_at"], r["load_finished_at"]) for r in records.values()]
        say(f"[editbatch] All workers ready: models loaded in "
            f"{max(e for _, e in loads) - min(s for s, _ in loads):.2f}s (staggered)")

    def open_ledger(self, plan: Plan, cluster: ClusterHandle, redis) -> tuple[Recorder, dict[str, Any]]:
        """Mark the run running (and earlier runs of this folder over); write run.json; start the manifest."""
        earlier = [r for r in plan.earlier_runs if keys.RUN_ID.match(r)]
        for run_id in earlier:
            # Their tasks still queued somewhere must not run next to ours.
            runstate.mark_cancelled(redis, self.ns, run_id, if_known=True)
        if not runstate.mark_running(redis, self.ns, plan.run_id):
            self.stopped = "run cancelled"  # a job cancelled while it was starting
        sched = self.config.schedule
        run_file = {
            "run_id": plan.run_id, "name": self.config.name, "state": runstate.RUNNING, "started_at": time.time(),
            "finished_at": None, "pid": os.getpid(), "host": socket.gethostname(),
            "cwd": os.getcwd(),  # the manifest's relative input paths are relative to it
            "namespace": self.ns, "broker": mask_password(cluster.broker),
            "broker_auto": self.config.cluster.broker == "auto", "folder_id": plan.folder_id,
            "mode": sched.mode, "devices": self.devices, "items": len(plan.items), "valid_items": len(plan.valid),
            "to_run": len(plan.todo), "reused": len(plan.carried.done), "identity": resume.identity(self.config),
            "runs": earlier + [plan.run_id],
        }
        write_json(plan.out_dir / layout.RUN, run_file)
        producer_clock = redisconn.retrying(lambda: clock.versus_redis(redis), 60)
        recorder = Recorder(plan.out_dir, plan.items, plan.seeds, plan.carried, retries=sched.retries, todo=plan.todo,
                            run_id=plan.run_id, clock_vs_redis=producer_clock)
        self.report_progress(recorder)
        return recorder, run_file

    def dispatch(self, plan: Plan, cluster: ClusterHandle, redis, recorder: Recorder, rounds: list[Round]) -> None:
        """Round 0 sends every item still to do; each later round retries what failed, on live devices."""
        sched, g = self.config.schedule, len(self.devices)
        self.progress = Progress(sched.mode, len(plan.todo), self.devices, stream=self.stream,
                                 batches=-(-len(plan.todo) // g) if self.facts.batched else None, batch_size=g)
        self.announce(plan)
        app = make_app(cluster.broker, task_events=self.config.cluster.task_events,
                       visibility_timeout_s=visibility_timeout(self.config))
        Submitter(app, None).connect()  # before the clock starts: connection set-up is not per-run dispatch cost
        self.progress.start()
        cancelled = self.cancel_check(redis, plan.run_id)
        watch = RunWatch(redis, self.ns, plan.run_id, plan.out_dir, seeds=plan.seeds,
                         ids={i.index: i.id for i in plan.items}, model=plan.model_id,
                         shared=shared_queue(plan.model_id))
        ctx = RunContext(self.config, plan.run_id, plan.folder_id, plan.out_dir, redis, app,
                         ResultInbox(redis, keys.results(self.ns, plan.run_id)), watch, self.progress,
                         recorder, plan.seeds, plan.model_id, should_stop=cancelled,
                         stopping=lambda: self.stopped is not None, on_change=lambda: self.report_progress(recorder),
                         on_device=self.device_changed)
        live, items = list(self.devices), plan.todo
        if self.stopped:
            raise RunCancelled("run cancelled before it started")
        while items:
            rounds.append(Round(len(rounds), items, live, ctx))
            items = rounds[-1].run()
            if not items:
                break
            live = self.live_devices(watch, cluster)
            if not live:
                for item in items:
                    recorder.close(item, "no live worker left to run it on", len(rounds) - 1)
                break
            self.progress.say(f"Round {len(rounds) + 1}: {len(items)} item(s) again on {len(live)} device(s) "
                              f"({', '.join(live)}; schedule.retries={sched.retries})")
        # Workers skip a cancelled run's items as soon as they see the cancel, so the last ones may settle
        # before this producer's next look (once a second): the run's state in Redis decides how it ended.
        if cancelled(fresh=True):
            raise RunCancelled("run cancelled (editbatch cancel); finished items are kept")

    def live_devices(self, watch: RunWatch, cluster: ClusterHandle) -> list[str]:
        """Devices whose worker serves now; waits a while for restarted workers to finish loading."""
        deadline = time.monotonic() + LIVE_WAIT_S
        while True:
            try:
                seen = watch.presence(self.devices)
            except redisconn.TRANSIENT:
                seen = {}
            live = [d for d in self.devices if seen.get(d)]
            if live and (len(live) == len(self.devices) or not cluster.restarting()) or time.monotonic() > deadline:
                return live
            time.sleep(1.0)

    def finish(self, plan: Plan, redis, recorder: Recorder, run_file: dict[str, Any], rounds: list[Round],
               dispatch_started_at: float) -> dict[str, Any]:
        """Settle every item, end the run in Redis, write the manifest, summary and run.json."""
        self.progress.close()
        why = self.stopped or "run ended"
        last = len(rounds) - 1 if rounds else 0
        if rounds:
            for item in rounds[-1].outstanding():
                recorder.close(item, f"{why} before this item finished", last, status=counts.NOT_RUN)
            for item in rounds[-1].to_retry:
                recorder.close(item, f"{why} before this item was retried", last)
        for item in plan.todo:
            if not recorder.settled(item.index):
                recorder.close(item, f"{why} before this item was sent", last, status=counts.NOT_RUN)
        state = runstate.CANCELLED if self.stopped else runstate.ENDED
        try:
            runstate.mark_over(redis, self.ns, plan.run_id, state)
        except Exception:  # noqa: BLE001 - the broker may be what failed; the run's files come first
            pass
        summary: dict[str, Any] = {}
        earlier = _read_summary(plan.out_dir) if self.options.resume else {}
        try:
            round0 = {i.index: k for k, i in enumerate(plan.todo)}
            sched = self.config.schedule
            summary = summarize(  # in one pass over the manifest as it is rewritten
                recorder.finalize(), mode=sched.mode, devices=self.devices, ordinal_of=round0,
                dispatch_started_at=dispatch_started_at,
                policy_factory=lambda: make_policy(sched.mode, len(plan.todo), self.devices,
                                                   shared_queue(plan.model_id), max_skew=sched.max_skew,
                                                   max_in_flight=sched.max_in_flight,
                                                   depth=queue_depth(len(self.devices),
                                                                     prefetch=self.config.cluster.prefetch,
                                                                     max_in_flight=sched.max_in_flight)),
                extra={"name": self.config.name, "run_id": plan.run_id, "model": plan.model_id, "state": state,
                       "max_skew": sched.max_skew if self.facts.skew_bounded else None,
                       "retries": sched.retries, "started_at": dispatch_started_at, "finished_at": time.time()})
            summary.update(self.segment(plan, summary, earlier))
            write_json(plan.out_dir / layout.SUMMARY, summary)
            run_file.update(state=state, finished_at=time.time())
            write_json(plan.out_dir / layout.RUN, run_file)
        except OSError as exc:
            # A full disk: the workers' records still hold every finished item, and a resume rebuilds the rest.
            raise EditBatchError(f"{plan.out_dir}: the run's files could not be written ({exc.strerror or exc}); "
                                 f"finished items are kept in {layout.RECORDS}/: free space, then "
                                 f"editbatch resume {plan.out_dir}") from None
        return summary

    def segment(self, plan: Plan, summary: dict[str, Any], earlier: dict[str, Any]) -> dict[str, Any]:
        """What this run of the folder covered, and every run of it so far: timings are per run."""
        kind = "retry" if self.options.only_failed else "resume" if self.options.resume else "first"
        mine = {"run_id": plan.run_id, "kind": kind, "items_run": len(plan.todo), "items": len(plan.items),
                "started_at": summary.get("started_at"), "finished_at": summary.get("finished_at")}
        runs = list(earlier.get("runs") or ([{k: earlier.get(k) for k in ("run_id", "started_at", "finished_at",
                                                                            "makespan_s", "efficiency")}
                                             | {"kind": "first", "items_run": earlier.get("items")}]
                                            if earlier.get("run_id") else []))
        runs.append({**mine, **{k: summary.get(k) for k in ("makespan_s", "efficiency", "barrier_idle_s")}})
        return {"covers": mine, "runs": runs}

    def report(self, plan: Plan, recorder: Recorder, summary: dict[str, Any]) -> RunResult:
        say = self.progress.say
        invalid = [(where(i), i.error) for i in plan.items if not i.valid]
        ratios = metrics.Ratios.of(summary)
        reused = f", {summary['reused']} reused" if summary.get("reused") else ""
        bound = f", lower bound {summary['lower_bound_s']:.2f}s" if ratios.efficiency is not None else ""
        say(f"Batch edit completed: {recorder.counts().text()}{reused} in {summary['makespan_s']:.2f}s"
            f" ({ratios.text()}{bound})")
        for item_id, error in invalid + recorder.failures:
            say(f"  {item_id}: {error}")
        if self.config.evaluate is not None:
            from ..scores.after_run import write_scores_after_run

            write_scores_after_run(plan.out_dir, say, self.judged)
        write_report_after_run(plan.out_dir, say)
        say(f"Outputs: {plan.out_dir}")
        code = EXIT_OK if not invalid and not recorder.failures else EXIT_ITEMS_FAILED
        return RunResult(code, plan.out_dir, summary)

    # ------------------------------------------------------------ helpers of the steps

    def report_progress(self, recorder: Recorder) -> None:
        if self.on_progress is not None:
            self.on_progress(recorder.counts().as_dict())

    def device_changed(self, queue: str, remaining: int) -> None:
        """Say that a device left (remaining > 0) or came back (remaining < 0, negated)."""
        n = abs(remaining)
        self.progress.say(f"{queue} {'lost' if remaining >= 0 else 'back'}: continuing with {n} "
                          f"device{'s' if n != 1 else ''}")

    def cancel_check(self, redis, run_id: str) -> Callable[..., bool]:
        """True once the run was cancelled (`editbatch cancel`, a job's cancel; asked at most once a second,
        or now with `fresh`)."""
        state = {"at": 0.0, "cancelled": False}

        def check(fresh: bool = False) -> bool:
            if self.should_stop is not None and self.should_stop():
                return True
            if state["cancelled"] or (not fresh and time.monotonic() - state["at"] < CANCEL_CHECK_S):
                return state["cancelled"]
            state["at"] = time.monotonic()
            try:
                state["cancelled"] = runstate.is_cancelled(redis, self.ns, run_id)
            except redisconn.TRANSIENT:
                pass
            return state["cancelled"]

        return check

    def announce(self, plan: Plan) -> None:
        """The seed's banner and task-assignment table."""
        sched, g, todo = self.config.schedule, len(self.devices), plan.todo
        if plan.carried.done:
            self.progress.say(f"[editbatch] Resuming: {len(plan.carried.done)} item(s) already done are reused, "
                              f"{len(todo)} to run")
        self.progress.banner(f"{self.config.model.type}: {self.config.model.path}", len(todo),
                             len(plan.items) - len(plan.valid), self.facts.settings_text(max_skew=sched.max_skew))
        per_device = ({d: [v.index for v in todo[k::g]] for k, d in enumerate(self.devices)}
                      if self.facts.per_device_queues else None)
        depth = queue_depth(g, prefetch=self.config.cluster.prefetch, max_in_flight=sched.max_in_flight)
        self.progress.assignment(per_device, self.facts.describe(len(todo), g, depth=depth, max_skew=sched.max_skew))


def _read_summary(out_dir: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((out_dir / layout.SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}

