"""The judge inside `editbatch run`: each item is sent to the judge workers as soon as its edit is committed.

The edits and the judge then overlap; the judge workers share the run's
Redis rate limit. Each final answer is cached by its worker before it is
reported, so a producer killed and resumed asks again only what was in
flight (items reused by the resume are sent too, and the cache answers them
at once). At the end of the run the feed is drained, then `editbatch
score`'s aggregation writes scores.json with the records collected here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ... import layout
from ...dataset import Item
from ...errors import ClusterError
from .dispatch import JudgeDispatch
from .setup import answer_deadline_s, asks_judge, make_stage
from .stage import JudgeJob


def job_of(item: Item, output: Path) -> JudgeJob:
    """The judge's view of a dataset item: its texts, images and other columns (for the template)."""
    return JudgeJob(item.id, item.instruction, output, list(item.images), item.target,
                    {**item.extra, "id": item.id, "category": item.category or ""})


class JudgeFeed:
    def __init__(self, dispatch: JudgeDispatch, out_dir: Path):
        self.dispatch = dispatch
        self.out_dir = out_dir

    @property
    def done(self) -> dict[str, dict[str, Any]]:
        return self.dispatch.done

    def submit(self, item: Item, record: dict[str, Any]) -> None:
        if record.get("output"):
            self.dispatch.submit(job_of(item, self.out_dir / record["output"]))

    def close(self, *, wait: bool, say: Callable[[str], None] = lambda m: None) -> None:
        """Drain the feed (the run ended), or stop collecting (stopped early: a resume sends the rest again)."""
        try:
            if wait:
                pending = self.dispatch.outstanding()
                if pending:
                    say(f"[editbatch] Waiting for the judge: {pending} item(s) still to answer")
                try:
                    self.dispatch.wait()
                except ClusterError as exc:
                    say(f"[editbatch] judge: {exc}")
        finally:
            self.dispatch.stop()


def open_feed(config, out_dir: Path, redis, app, run_id: str, say: Callable[[str], None]) -> JudgeFeed | None:
    """A feed when the run's evaluate section asks a judge, else None."""
    evaluate = config.evaluate
    if not asks_judge(evaluate):
        return None
    stage = make_stage(evaluate, "evaluate")
    from .workers import serving

    if not serving(redis, config.cluster.namespace, stage.queue) and config.cluster.broker != "auto":
        say(f"[editbatch] No judge worker serves {stage.queue} yet: the judge's items wait in its queue until one "
            f"does (editbatch judge-worker --config CONFIG, with this run's evaluate section)")
    dispatch = JudgeDispatch(app, redis, config.cluster.namespace, run_id, stage.queue,
                             evaluate.cache_dir or out_dir / layout.SCORES_CACHE,
                             deadline_s=answer_deadline_s(evaluate.judge), say=say)
    return JudgeFeed(dispatch, out_dir)
