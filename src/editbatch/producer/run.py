"""One run from config to files: check items, get workers, dispatch, write the results.

The steps, in order: read and check the dataset; prepare the output folder;
start a private cluster or connect to the configured broker; wait until
every device's worker has loaded its model; dispatch by mode; write the
manifest, workers.json and summary.json; stop what was started.
"""

from __future__ import annotations

import contextlib
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from redis import Redis

from ..barrier import BatchBarrier
from ..celery_app import make_app
from ..config import RunConfig, dump_config
from ..dataset import Item, check_items, load_dataset
from ..devices import SHARED_QUEUE
from ..errors import EXIT_ITEMS_FAILED, EXIT_OK, ConfigError
from ..models.registry import get_model_class
from ..scheduling import Assignment, make_policy
from ..scheduling.policies import batch_count, batch_size
from ..seeding import item_seed
from ..tasks.contract import EditTask
from .dispatch import Dispatcher
from .inbox import ResultInbox
from .outputs import Manifest, manifest_record, write_json
from .progress import Progress
from .run_record import write_run_record
from ..report.after_run import write_report_after_run
from ..workers.presence import read_workers
from .readiness import wait_for_workers
from .submit import Submitter
from .summary import summarize


@dataclass
class RunResult:
    exit_code: int
    output_dir: Path
    summary: dict[str, Any]


def prepare_items(config: RunConfig, source: str, *, strict: bool) -> list[Item]:
    model_cls = get_model_class(config.model.type)
    items = load_dataset(config.dataset.path, config.dataset.format, config.dataset.limit, source=source)
    check_items(items, max_images=model_cls.max_images)
    bad = [i for i in items if not i.valid]
    if strict and bad:
        listing = "; ".join(f"{i.id}: {i.error}" for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise ConfigError(str(config.dataset.path), "items", f"{len(bad)} invalid item(s) with --strict: {listing}")
    return items


def execute(config: RunConfig, *, source: str, strict: bool = False, stream: TextIO | None = None) -> RunResult:
    items = prepare_items(config, source, strict=strict)
    out_dir = config.output_dir.resolve()
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    resolved = out_dir / "config.resolved.yaml"
    resolved.write_text(dump_config(config, redact=True), encoding="utf-8")

    with contextlib.ExitStack() as stack:
        check_alive = None
        if config.cluster.broker == "auto":
            from ..cluster.local import LocalCluster

            cluster = stack.enter_context(LocalCluster(resolved, config.devices, out_dir / "logs"))
            broker = cluster.start()
            check_alive = cluster.check_alive
        else:
            broker = config.cluster.broker
        return _run(config, items, out_dir, broker, check_alive, stream)


def _await_workers(config: RunConfig, redis: Redis, out_dir: Path, check_alive, say) -> None:
    """Unified start: block until every device's worker has loaded the model; record them in workers.json."""
    devices = [d.queue for d in config.devices]
    say(f"[editbatch] Waiting for {len(devices)} worker(s) to load {config.model.type} "
        f"(load_concurrency={config.cluster.load_concurrency})")
    records = wait_for_workers(redis, config.cluster.namespace, devices, timeout_s=config.cluster.ready_timeout_s,
                               model={"type": config.model.type, "path": config.model.path}, check_alive=check_alive)
    write_json(out_dir / "workers.json", [
        {k: r.get(k) for k in ("device", "queue", "host", "pid", "worker", "model", "load_started_at",
                                "load_finished_at", "ready_at")} for r in records.values()])
    loads = [(r["load_started_at"], r["load_finished_at"]) for r in records.values()]
    say(f"[editbatch] All workers ready: models loaded in {max(e for _, e in loads) - min(s for s, _ in loads):.2f}s "
        "(staggered)")


def _announce(progress: Progress, config: RunConfig, items: list[Item], valid: list[Item]) -> None:
    """The seed's banner and task-assignment table."""
    sched, devices = config.schedule, [d.queue for d in config.devices]
    g = len(devices)
    progress.banner(f"{config.model.type}: {config.model.path}", len(valid), len(items) - len(valid),
                    f", max_skew={sched.max_skew}" if sched.mode == "window" else "")
    per_device = None
    if sched.mode in ("sync", "nosync"):
        per_device = {d: [v.index for v in valid[k::g]] for k, d in enumerate(devices)}
    progress.assignment(per_device, in_flight=(sched.max_skew + 1) * g if sched.mode == "window"
                        else g * (config.cluster.prefetch + 1))


def _run(config: RunConfig, items: list[Item], out_dir: Path, broker: str, check_alive, stream) -> RunResult:
    devices = [d.queue for d in config.devices]
    ns = config.cluster.namespace
    redis = Redis.from_url(broker, socket_keepalive=True, health_check_interval=30)
    model_id = {"type": config.model.type, "path": config.model.path}
    run_id = uuid.uuid4().hex[:12]
    write_run_record(out_dir, config, run_id=run_id, items=len(items), valid=sum(i.valid for i in items), broker=broker)
    print(f"[editbatch] Run {run_id}: output folder {out_dir} (editbatch status {out_dir})", file=stream or sys.stdout)
    _await_workers(config, redis, out_dir, check_alive, Progress(config.schedule.mode, 0, devices, stream=stream).say)

    valid = [i for i in items if i.valid]
    seeds = {i.index: item_seed(config.schedule.seed, i.id) for i in items}
    sched = config.schedule
    g = len(devices)

    worker_barrier = sched.mode == "sync" and sched.barrier == "worker"

    def policy_factory(lookahead: int = 0):
        return make_policy(sched.mode, len(valid), devices, SHARED_QUEUE, max_skew=sched.max_skew,
                           max_in_flight=sched.max_in_flight, lookahead=lookahead,
                           depth=config.cluster.prefetch + 1)

    batched = sched.mode in ("sync", "window")
    progress = Progress(sched.mode, len(valid), devices, stream=stream,
                        batches=batch_count(len(valid), g) if batched else None, batch_size=g)
    _announce(progress, config, items, valid)

    inbox = ResultInbox(redis, f"{ns}:run:{run_id}:results")
    policy = policy_factory(lookahead=1 if worker_barrier else 0)

    def barrier(batch: int) -> BatchBarrier:
        return BatchBarrier(f"{ns}:run:{run_id}:barrier", batch, policy.batch_size(batch), policy.batch_size(batch + 1))

    manifest = Manifest(out_dir)
    for item in items:
        if not item.valid:
            manifest.add(manifest_record(item, seeds[item.index]))

    def payload_for(a: Assignment, now: float) -> dict[str, Any]:
        item = valid[a.ordinal]
        if a.batch is not None:
            progress.track_batch(a.batch, batch_size(len(valid), g, a.batch))
        sync_point = {}
        if worker_barrier:
            sync_point = {"wait_for": barrier(a.batch - 1).to_dict() if a.batch else None,
                          "arrive_at": barrier(a.batch).to_dict(), "wait_timeout_s": 2 * sched.task_timeout_s}
        return EditTask(**sync_point, id=item.id, images=[str(p.resolve()) for p in item.images], instruction=item.instruction,
                        output_dir=str(out_dir), seed=seeds[item.index], index=item.index, batch=a.batch,
                        params={**config.model.params, **(item.extra.get("params") or {})}, model=model_id, run=run_id, report=inbox.key,
                        submitted_at=now).to_payload()

    submitter = Submitter(make_app(broker, task_events=config.cluster.task_events), payload_for)
    submitter.connect()  # before the clock starts: connection set-up is not per-run dispatch cost
    failures: list[tuple[str, str]] = []

    def on_result(ordinal: int, result: dict[str, Any]) -> None:
        item = valid[ordinal]
        result.setdefault("submitted_at", submitter.submitted_at.get(ordinal))
        if not batched:
            result["batch"] = None
        record = manifest_record(item, seeds[item.index], result)
        manifest.add(record)
        if record["status"] != "ok":
            failures.append((item.id, record["error"] or "failed"))
        if result.get("lost") and worker_barrier:
            barrier(result["batch"]).arrive(redis)  # count the lost task in, or its batch's successors wait forever
        progress.item_done(result.get("batch"), result.get("device"), result.get("started_at"),
                           result.get("finished_at"))

    def gone(queues: set[str]) -> set[str]:
        return {q for q, record in read_workers(redis, ns, sorted(queues)).items() if record is None}

    dispatcher = Dispatcher(policy, submitter, inbox, index_of=[i.index for i in valid],
                            task_timeout_s=sched.task_timeout_s, on_result=on_result, device_queues=devices,
                            gone=gone)
    started = time.time()
    progress.start()
    interrupted = False
    try:
        dispatcher.run()
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        progress.close()
        if interrupted or not dispatcher.policy.complete:
            for ordinal in sorted(dispatcher.outstanding):
                on_result(ordinal, {"status": "failed", "error": "run interrupted before this item finished"})
            for ordinal in range(len(valid)):
                if valid[ordinal].index not in manifest.records:
                    on_result(ordinal, {"status": "failed", "error": "run interrupted before this item was sent"})
        ordered = manifest.finalize()
        _forget_run(redis, f"{ns}:run:{run_id}:")
        redis.close()
        summary = summarize(ordered, mode=sched.mode, devices=devices,
                            ordinal_of={i.index: k for k, i in enumerate(valid)}, dispatch_started_at=started,
                            policy_factory=policy_factory,
                            extra={"name": config.name, "run_id": run_id, "model": model_id,
                                   "max_skew": sched.max_skew if sched.mode == "window" else None,
                                   "started_at": started, "finished_at": time.time()})
        write_json(out_dir / "summary.json", summary)

    invalid = [(i.id, i.error) for i in items if not i.valid]
    eff = summary["efficiency"]
    progress.say(f"Batch edit completed: {summary['ok']} ok, {summary['failed']} failed, {summary['invalid']} invalid "
                 f"in {summary['makespan_s']:.2f}s"
                 + (f" (efficiency {eff:.3f}, lower bound {summary['lower_bound_s']:.2f}s)" if eff else ""))
    for item_id, error in invalid + failures:
        progress.say(f"  {item_id}: {error}")
    write_report_after_run(out_dir, progress.say)
    progress.say(f"Outputs: {out_dir}")
    code = EXIT_OK if not invalid and not failures else EXIT_ITEMS_FAILED
    return RunResult(code, out_dir, summary)


def _forget_run(redis: Redis, prefix: str) -> None:
    """Drop the run's inbox and barrier keys (they also expire on their own, so a failure here is harmless)."""
    try:
        keys = list(redis.scan_iter(match=prefix + "*", count=1000))
        if keys:
            redis.delete(*keys)
    except Exception:  # noqa: BLE001 - the broker may be what failed; the run's files come first
        pass
