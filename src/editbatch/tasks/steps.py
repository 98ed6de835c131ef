"""The steps of one item on a worker, after the Celery task has decided to run it here.

`process` reads as the chain: check the paths and decode the inputs; check
the model and claim (with the run's state and the copy's take-back mark, in
one round trip): in sync mode before waiting for the previous batch,
otherwise just before the device is expected to be free; then, holding the
device slot, start the item (the run's state, then the producer's "started"
event: one script, see claim.Start, sent by the item before it as it leaves
the device; in sync mode it rides the barrier's wake) and compute (arriving
at once) unless an attempt left uncommitted can be adopted; then, with the
slot passed on to the next item, write and
commit, and hand back (release the claim, arrive: one script with the
result, see handback.py); then the report's thumbnails. Each step is a function of the task and
the worker runtime, usable on its own (tests call them against a real Redis
and a runtime started in-process). The result is the contract's result dict
(see contract.py); `status` is "ok" only once the image and record are in
place under their final names.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image

from .. import clock, ledger, redisconn
from ..imageio import load_rgb
from ..models import identity
from ..models.base import EditRequest
from ..report.thumbnails import write_item_thumbnails
from ..workers import activity, runtime
from ..workers.device_slot import GiveBack
from ..workers.roots import confine
from . import claim, commit, scoring, sync_point
from .contract import EditTask
from .failures import Skipped
from .handback import HandBack

STOP_POLL_S = 0.5
# A copy that lost its claim (its worker was judged gone) waits this long at most for the copy that replaced it.
SUPERSEDED_WAIT_S = 60.0
REUSED_FIELDS = ("status", "output", "started_at", "finished_at", "work_s", "info", "device", "worker", "host",
                 "pid", "attempt", "scores")


@dataclass
class Edited:
    """What the model made, with the decoded inputs (for thumbnails)."""

    image: Image.Image
    info: dict[str, Any]
    inputs: list[tuple[str, Image.Image]]


def process(task: EditTask, rt: "runtime.WorkerRuntime", hand_back: HandBack | None = None) -> dict[str, Any]:
    """Run the item's steps. Its claim release and barrier arrival go into `hand_back` for the caller to send
    with the result (the Celery task); without one, they are sent here before returning. Skipped (nothing
    done, nothing owed) for a task of a run that is over or a copy taken back; GiveBack for a task that
    found its worker leaving before it started."""
    result = new_result(task, rt)
    own = hand_back is None
    hand_back = HandBack() if own else hand_back
    arrived = skipped = False
    held: claim.Claim | None = None
    found: tuple[commit.Attempt, dict] | None = None  # an uncommitted attempt this claim takes over
    try:
        check_paths(task, rt)
        inputs = load_inputs(task, rt)  # decoded while the device still runs the item before
        done: dict[str, Any] | None = None  # the item's record, when it was finished before
        asked_at = 0.0  # when the run was last found not over (monotonic)

        start: claim.Start | None = None

        def take_claim() -> None:
            nonlocal held, found, done, asked_at, start
            check_model(task, rt)
            got = claim.take(task, rt)  # "started" goes once the item has the slot, below
            asked_at = time.monotonic()
            if isinstance(got, dict):  # finished before (an earlier run, or another copy of this task)
                done = got
                return
            held, found = got, adoptable(task, got)
            start = claim.Start(task, rt, got.item.claim)

        if task.wait_for:
            # Sync mode: claimed while the previous batch still runs, so the barrier's opening wakes this item
            # (and starts it, in the same round trip) straight into the slot and the model call.
            take_claim()
            if start is not None:
                sync_point.wait_for_previous_batch(task, rt, start)
                asked_at = time.monotonic()

        def begin() -> Callable[[], None]:
            # Started as the device frees, not at the claim: an item claimed ahead whose worker dies or leaves
            # before its turn (an edit hung ahead of it) is still awaited, not counted as lost.
            if start is None:
                return lambda: None  # finished before: nothing starts
            check_model(task, rt)  # a model switch may have come between the claim and the slot
            return start.send()

        if done is None:
            # Otherwise claimed just before the edit ahead of it is expected to end (see device_slot.py).
            sync = bool(task.wait_for)
            with on_device(task, rt, hand_back, prepare=None if sync else take_claim, begin=None if sync else begin):
                if done is None:
                    if sync:
                        check_model(task, rt)
                    else:
                        asked_at = time.monotonic()  # the start script found the run going
                    if found is None:
                        edited = compute(task, rt, inputs, result, asked_at)
                        arrived = sync_point.arrive_now(task, rt)
                        scoring.score_edit(task, rt, edited.image, result)
        if done is not None:
            reuse(done, result)
            return result
        # Off the device: the next item computes while this one's files are written and committed.
        if found is None:
            place(task, rt, held, edited, result, hand_back)
        else:
            adopt(task, rt, held, found, result)
    except (Skipped, GiveBack):
        skipped = True  # not started: no arrival (the copy that runs it arrives)
        raise
    except commit.WriteFailed as exc:  # a full or read-only disk: one line naming the file is the whole story
        fail(result, str(exc))
    except Exception as exc:  # noqa: BLE001 - one bad item must not stop the worker
        fail(result, f"{exc.__class__.__name__}: {exc}", traceback.format_exc(limit=6))
    finally:
        if rt.guard is not None:
            rt.guard.edit_finished(task.id)  # a failed item's deadline, too
        try:
            if held is not None:
                held.hand_over(hand_back)
            if not (arrived or skipped):
                sync_point.arrive(task, rt, hand_back)
        finally:
            if own:
                send(rt, hand_back)
    return result


@contextlib.contextmanager
def on_device(task: EditTask, rt: "runtime.WorkerRuntime", hand_back: HandBack,
              prepare: Callable[[], None] | None = None,
              begin: Callable[[], Callable[[], None]] | None = None) -> Iterator[None]:
    """Hold the device slot (see workers/device_slot.py) for the item's model call and metrics, `prepare`
    (the claim) run just before and `begin` (the start) as the device frees; the guard counts what the turn
    raised (a broken CUDA context) as it ends."""
    def leaving() -> bool:
        return runtime.shutting_down.is_set() or (rt.guard is not None and rt.guard.retiring)

    with rt.slot.hold({"task": task.id, "task_index": task.index, "task_run": task.run}, leaving=leaving,
                      prepare=prepare, begin=begin, group=task.run):
        working(task, hand_back)
        try:
            yield
        except Skipped:
            raise  # no edit: tells nothing about the GPU
        except Exception as exc:
            if rt.guard is not None:
                rt.guard.left_device(f"{exc.__class__.__name__}: {exc}")
            raise
        if rt.guard is not None:
            rt.guard.left_device(None)


def working(task: EditTask, hand_back: HandBack) -> None:
    """List the item as this worker's until its hand-back is sent (workers/activity.py); once."""
    if hand_back.working is None:
        activity.begin(task.index)
        hand_back.working = task.index


def send(rt: "runtime.WorkerRuntime", hand_back: HandBack) -> None:
    """The item's Redis writes after its files, in one round trip (retried while Redis is away); then the
    item is no longer listed as this worker's, and what waited for the hand-back is done."""
    try:
        runtime.keep_retrying(lambda: hand_back.send(rt.redis))
    finally:
        if hand_back.working is not None:
            activity.end(hand_back.working)
            hand_back.working = None
        after, hand_back.after = hand_back.after, []
        for work in after:
            work()


def new_result(task: EditTask, rt: "runtime.WorkerRuntime") -> dict[str, Any]:
    return {"id": task.id, "index": task.index, "batch": task.batch, "seed": task.seed,
            "submitted_at": task.submitted_at, **rt.identity,
            "status": "failed", "output": None, "error": None, "info": {}, "work_s": None,
            "started_at": None, "finished_at": None, "scores": None}


def fail(result: dict[str, Any], error: str, trace: str | None = None) -> None:
    result.update(status="failed", error=error)
    if trace:
        result["traceback"] = trace
    if result["started_at"] is None:
        result["started_at"] = result["finished_at"] = clock.now()


def adoptable(task: EditTask, held: claim.Claim) -> tuple[commit.Attempt, dict] | None:
    """An attempt at the item left uncommitted by an earlier holder, taken over by this claim (commit.adopt)."""
    return commit.adopt(Path(task.output_dir), task.id, held.token, seed=task.seed, model=task.model,
                        folder=task.folder)


def check_model(task: EditTask, rt: "runtime.WorkerRuntime") -> None:
    if not identity.matches(task.model, rt.loaded):
        raise RuntimeError(f"this worker serves {identity.describe(rt.loaded)}, the task asks for "
                           f"{identity.describe(task.model)} ({identity.difference(task.model, rt.loaded)})")


def check_paths(task: EditTask, rt: "runtime.WorkerRuntime") -> None:
    """Every input and output of the item inside the worker's roots (a payload cannot aim elsewhere)."""
    out = Path(task.output_dir)
    confine(task.images, out / ledger.image_relpath(task.id), rt.roots)
    rt.roots.check_output(ledger.record_path(out, task.id))
    rt.roots.check_output(commit.Attempt(out, task.id, 0).image)


def load_inputs(task: EditTask, rt: "runtime.WorkerRuntime") -> list[Image.Image]:
    return [load_rgb(p, rt.max_pixels) for p in task.images] if rt.model.reads_images else []


def compute(task: EditTask, rt: "runtime.WorkerRuntime", images: list[Image.Image],
            result: dict[str, Any], asked_at: float) -> Edited:
    """Run the model on the decoded inputs; the times of the model call go into `result`. The run was found
    not over at `asked_at` (monotonic)."""
    params = {**rt.model_config.params, **task.params}
    request = EditRequest(task.id, images, task.instruction, task.seed, params,
                          should_stop=stop_check(task, rt, asked_at))
    if rt.guard is not None:
        rt.guard.task_started(task.id, task.timeout_s)
    result["started_at"] = clock.now()
    began = time.monotonic()  # the edit's length on a clock that never steps
    try:
        out = rt.model.edit(request)
    finally:
        result["finished_at"] = result["started_at"] + (time.monotonic() - began)
    return Edited(out.image, dict(out.info), list(zip(task.images, images)))


def adopt(task: EditTask, rt: "runtime.WorkerRuntime", held: claim.Claim, found: tuple[commit.Attempt, dict],
          result: dict[str, Any]) -> None:
    """Commit a finished attempt left uncommitted by an earlier holder (found by commit.adopt) instead of
    computing the item."""
    attempt, record = found
    if settle(task, rt, held, attempt, result):
        reuse(record, result)
        result["adopted"] = True


def place(task: EditTask, rt: "runtime.WorkerRuntime", held: claim.Claim, edited: Edited,
          result: dict[str, Any], hand_back: HandBack | None = None) -> None:
    """Write this attempt, commit it and move its files into place; or, if a later claim superseded it,
    take what the committed attempt made (`superseded: true`). The thumbnails wait for `hand_back` to be
    sent, when there is one."""
    attempt = commit.Attempt(Path(task.output_dir), task.id, held.token)
    info = dict(edited.info)
    done = {**result, "status": "ok", "output": ledger.image_relpath(task.id), "work_s": info.pop("work_s", None),
            "info": info, "attempt": held.token}
    attempt.write(edited.image, {**done, "model": task.model, "run": task.run, "folder": task.folder})
    if rt.guard is not None:
        rt.guard.edit_finished(task.id)
    if settle(task, rt, held, attempt, result):
        result.update(done)
        # The report's thumbnails, from the images in memory: a report of thousands of items then decodes none.
        def thumbnails() -> None:
            write_item_thumbnails(task.output_dir, attempt.final_image, edited.image, edited.inputs)

        if hand_back is None:
            thumbnails()
        else:
            hand_back.after.append(thumbnails)


def settle(task: EditTask, rt: "runtime.WorkerRuntime", held: claim.Claim, attempt: commit.Attempt,
           result: dict[str, Any]) -> bool:
    """Commit a written attempt and move it into place (True); if it lost, `result` becomes the committed
    record's (False). Redis out of reach raises, leaving the attempt for the next holder to adopt."""
    won = runtime.keep_retrying(lambda: commit.commit(rt.redis, held.item.fence, held.token))
    if won == held.token:
        attempt.move_into_place()
        return True
    attempt.discard()
    result["superseded"] = True
    record = wait_for_commit(task, rt, held.item, won)
    if record is None:
        raise RuntimeError("a later claim of this item superseded this attempt (its worker was judged gone); "
                           "the copy that replaced it reports the item")
    reuse(record, result)
    return False


def wait_for_commit(task: EditTask, rt: "runtime.WorkerRuntime", item: claim.ItemKeys,
                    token: int) -> dict[str, Any] | None:
    """The committed record of the item, waiting a while for the attempt that superseded ours to commit."""
    deadline = time.monotonic() + min(task.wait_timeout_s or SUPERSEDED_WAIT_S, SUPERSEDED_WAIT_S)
    while not token:
        if time.monotonic() > deadline or rt.run_ended(task.run):
            return None
        time.sleep(claim.CLAIM_POLL_S)
        token = runtime.keep_retrying(lambda: commit.committed(rt.redis, item.fence)) or 0
    return runtime.keep_retrying(lambda: commit.committed_record(
        rt.redis, item.fence, task.output_dir, task.id, token, seed=task.seed, model=task.model))


def reuse(record: dict[str, Any], result: dict[str, Any]) -> None:
    """The item as it was computed: by whom and when (its times are not this task's)."""
    for key in REUSED_FIELDS:
        result[key] = record.get(key)
    result["reused"] = True
    result["computed_in_run"] = record.get("run")


def stop_check(task: EditTask, rt: "runtime.WorkerRuntime", asked_at: float) -> Callable[[], bool]:
    """`should_stop` for the adapter: asks Redis at most every STOP_POLL_S seconds, the first time that long
    after the run was last found not over (`asked_at`, monotonic: moments before the edit began)."""
    state = {"at": asked_at, "stop": False}

    def should_stop() -> bool:
        now = time.monotonic()
        if not state["stop"] and now - state["at"] >= STOP_POLL_S:
            state["at"] = now
            try:
                state["stop"] = rt.run_ended(task.run)
            except redisconn.TRANSIENT:
                pass  # keep editing; asked again on a later step
        return state["stop"]

    return should_stop
