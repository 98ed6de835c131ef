"""One round of a run: a list of items sent over a set of devices under the run's mode.

Round 0 sends every item still to do; each later round sends again what
failed or was lost, on the devices still alive. A round owns its policy, its
sync-mode barrier, its submitter and its dispatcher, and hands every result
to the run's recorder; it returns the items to try again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from celery import Celery
from redis import Redis

from .. import keys, layout, redisconn
from ..barrier import BatchBarrier
from ..config import RunConfig
from ..dataset import Item
from ..errors import EditBatchError
from ..models.identity import shared_queue
from ..scheduling import Assignment, make_policy, policy_class
from ..scheduling.policies import batch_size, queue_depth
from ..tasks.contract import EditTask
from .dispatch import Dispatcher
from .inbox import ResultInbox
from .progress import Progress
from .recorder import Recorder
from .submit import Submitter
from .take_back import TakeBack
from .watch import RunWatch

# Errors of a write that failed for lack of room or rights: when every device reports one in a row,
# nothing more can be written and the run stops instead of failing every remaining item the same way.
_UNWRITABLE = re.compile(r"\[Errno (28|30|122)\]|No space left|Read-only file system|Disk quota exceeded")


class OutputsUnwritable(EditBatchError):
    """The output folder takes no more writes (a full disk): the run stops, the rest is `not_run`."""


@dataclass
class RunContext:
    """What every round of one run shares."""

    config: RunConfig
    run_id: str
    folder_id: str
    out_dir: Path
    redis: Redis
    app: Celery
    inbox: ResultInbox
    watch: RunWatch
    progress: Progress
    recorder: Recorder
    seeds: dict[int, int]
    model_id: dict[str, Any]
    should_stop: Callable[[], bool]
    stopping: Callable[[], bool]  # the run is being stopped: failed items are not retried
    on_change: Callable[[], None]  # counts changed
    on_device: Callable[[str, int], None]

    @property
    def devices(self) -> list[str]:
        return [d.queue for d in self.config.devices]


class Round:
    def __init__(self, number: int, items: list[Item], devices: list[str], ctx: RunContext):
        sched = ctx.config.schedule
        self.number = number
        self.items = items
        self.devices = devices
        self.ctx = ctx
        self.facts = policy_class(sched.mode)
        # Sync mode's barrier held on the workers: the next batch waits queued at the devices.
        self.worker_barrier = self.facts.synchronised and sched.barrier == "worker"
        self.policy = make_policy(sched.mode, len(items), devices, shared_queue(ctx.model_id),
                                  max_skew=sched.max_skew, max_in_flight=sched.max_in_flight,
                                  lookahead=1 if self.worker_barrier else 0,
                                  depth=queue_depth(len(devices), prefetch=ctx.config.cluster.prefetch,
                                                    max_in_flight=sched.max_in_flight))
        self.submitter = Submitter(ctx.app, self.payload_for)
        # Prefetched tasks stranded behind a busy device move to an idle one (shared-queue modes).
        self.take_back = (TakeBack(ctx.redis, ctx.config.cluster.namespace, ctx.run_id, number,
                                   say=ctx.progress.say, name_of=lambda o: self.items[o].id)
                          if self.facts.takes_back and sched.take_back and ctx.config.cluster.prefetch > 1 else None)
        self.to_retry: list[Item] = []
        self.unwritable_in_a_row = 0
        self.dispatcher = Dispatcher(
            self.policy, self.submitter, ctx.inbox, index_of=[i.index for i in items],
            task_timeout_s=sched.task_timeout_s, on_result=self.on_result, device_queues=devices, watch=ctx.watch,
            should_stop=ctx.should_stop, on_device_lost=ctx.on_device, on_check=self.repair_barrier,
            take_back=self.take_back)

    def run(self) -> list[Item]:
        """Dispatch every item of the round; return those to try again."""
        if self.number == 0 and self.facts.batched:
            for batch in range(-(-len(self.items) // len(self.devices))):
                self.ctx.progress.track_batch(batch, batch_size(len(self.items), len(self.devices), batch))
        self.dispatcher.run()
        return self.to_retry

    def outstanding(self) -> list[Item]:
        """Items sent and not settled (the round was stopped)."""
        return [self.items[o] for o in sorted(self.dispatcher.outstanding)]

    # ------------------------------------------------------------ messages

    def barrier(self, batch: int) -> BatchBarrier:
        prefix = f"{keys.barrier_prefix(self.ctx.config.cluster.namespace, self.ctx.run_id)}:{self.number}"
        return BatchBarrier(prefix, batch, self.policy.batch_size(batch), self.policy.batch_size(batch + 1))

    def payload_for(self, a: Assignment, now: float) -> dict[str, Any]:
        ctx, item, sched = self.ctx, self.items[a.ordinal], self.ctx.config.schedule
        sync_point = {}
        if self.worker_barrier:
            sync_point = {"wait_for": self.barrier(a.batch - 1).to_dict() if a.batch else None,
                          "arrive_at": self.barrier(a.batch).to_dict(),
                          "wait_timeout_s": 2 * sched.task_timeout_s}
        return EditTask(**sync_point, id=item.id, images=[str(p.resolve()) for p in item.images],
                        instruction=item.instruction, output_dir=str(ctx.out_dir), seed=ctx.seeds[item.index],
                        index=item.index, batch=a.batch,
                        params={**ctx.config.model.params, **(item.extra.get("params") or {})},
                        model=ctx.model_id, run=ctx.run_id, report=ctx.inbox.key, submitted_at=now,
                        timeout_s=sched.task_timeout_s, folder=ctx.folder_id,
                        target=str(item.target.resolve()) if item.target else None, texts=captions(item),
                        evaluate=evaluate_spec(ctx.config, ctx.out_dir),
                        ticket=self.take_back.ticket(a.ordinal) if self.take_back else None).to_payload()

    def on_result(self, ordinal: int, result: dict[str, Any]) -> None:
        item, ctx = self.items[ordinal], self.ctx
        result.setdefault("submitted_at", self.submitter.submitted_at.get(ordinal))
        if not self.facts.batched:
            result["batch"] = None
        if self.worker_barrier and result.get("batch") is not None:
            # Idempotent per item: counts in an item settled here (lost, or taken from its record) at
            # once; the worker's own arrival for an item that reported is counted once all the same.
            try:
                self.barrier(result["batch"]).arrive(ctx.redis, item.index)
            except redisconn.TRANSIENT:
                pass  # repaired by the next check (repair_barrier)
        retry = ctx.recorder.record(item, result, self.number, stopping=ctx.stopping())
        if retry:
            self.to_retry.append(item)
        else:
            ctx.progress.item_done(result.get("batch") if self.number == 0 else None, result.get("device"),
                                   result.get("started_at"), result.get("finished_at"))
        ctx.on_change()
        self._watch_writes(result)

    def _watch_writes(self, result: dict[str, Any]) -> None:
        failed = self.ctx.recorder.manifest.write_error
        if failed is not None:
            raise OutputsUnwritable(f"{self.ctx.out_dir}: {self.ctx.recorder.manifest.path.name} cannot be written "
                                    f"({failed.strerror or failed}); run stopped, finished items are kept: free "
                                    f"space, then editbatch resume {self.ctx.out_dir}")
        if result.get("status") == "ok" or not _UNWRITABLE.search(str(result.get("error") or "")):
            self.unwritable_in_a_row = 0 if result.get("status") == "ok" else self.unwritable_in_a_row
            return
        self.unwritable_in_a_row += 1
        if self.unwritable_in_a_row >= max(2, len(self.devices)):
            raise OutputsUnwritable(f"{self.ctx.out_dir}: outputs cannot be written ({result.get('error')}); "
                                    f"run stopped, finished items are kept: free space, then "
                                    f"editbatch resume {self.ctx.out_dir}")

    def repair_barrier(self) -> None:
        """Open the barrier behind the oldest outstanding batch, had a Redis restart lost arrivals."""
        if not self.worker_barrier or not self.dispatcher.outstanding:
            return
        oldest = min(a.batch for a in self.dispatcher.outstanding.values())
        if oldest:
            size = len(self.devices)
            members = [self.items[o].index for o in range((oldest - 1) * size, min(oldest * size, len(self.items)))]
            try:
                self.barrier(oldest - 1).force_open(self.ctx.redis, members)
            except redisconn.TRANSIENT:
                pass


def captions(item: Item) -> dict[str, str] | None:
    """The dataset's caption columns, for CLIP-T and CLIP direction."""
    found = {k: str(item.extra[k]) for k in ("input_caption", "output_caption") if item.extra.get(k)}
    return found or None


def evaluate_spec(config, out_dir: Path) -> dict[str, Any] | None:
    """What the workers score right after each edit (None: nothing)."""
    evaluate = config.evaluate
    if evaluate is None or not evaluate.all_metrics():
        return None
    cache = evaluate.cache_dir or out_dir / layout.SCORES_CACHE
    return {"metrics": evaluate.all_metrics(), "clip": evaluate.clip, "dino": evaluate.dino,
            "cache_dir": str(Path(cache).resolve())}
