"""The judge inside `editbatch run`: each item is sent to the judge threads as soon as its edit is committed.

The edits and the judge then overlap; the judge's requests share the run's
Redis rate limit. Each answer is cached as it arrives, so a producer killed
and resumed asks again only what was in flight (items reused by the resume
are fed too, and the cache answers them at once). At the end of the run the
feed is drained, then `editbatch score`'s aggregation writes scores.json
from the same cache.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from ...dataset import Item
from ... import layout
from ..cache import ScoreCache
from ..presets import PRESETS
from .client import JudgeSettings
from .ratelimit import SharedRateLimit
from .stage import JudgeJob, JudgeStage, default_template

log = logging.getLogger("editbatch.judge")


class JudgeFeed:
    def __init__(self, stage: JudgeStage, out_dir: Path, workers: int):
        self.stage = stage
        self.out_dir = out_dir
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="judge")
        self.futures: list[Future] = []
        self.done: dict[str, dict[str, Any]] = {}  # item id -> the judge's record

    def submit(self, item: Item, record: dict[str, Any]) -> None:
        if not record.get("output"):
            return
        job = JudgeJob(item.id, item.instruction, self.out_dir / record["output"], list(item.images), item.target,
                       {**item.extra, "id": item.id, "category": item.category or ""})
        self.futures.append(self.pool.submit(self._one, job))

    def _one(self, job: JudgeJob) -> None:
        if self.stage.stop.is_set():
            return
        try:
            self.done[job.id] = self.stage.judge(job)
        except InterruptedError:
            pass  # the run was stopped while this item waited for the rate limit
        except Exception as exc:  # noqa: BLE001 - one item's judge trouble must not stop the run
            log.warning("judge of %s failed: %s: %s", job.id, exc.__class__.__name__, exc)

    def close(self, *, wait: bool, say: Callable[[str], None] = lambda m: None) -> None:
        """Drain the feed (the run ended), or stop it (cancelled: what is in flight ends, nothing new starts)."""
        if wait:
            pending = sum(1 for f in self.futures if not f.done())
            if pending:
                say(f"[editbatch] Waiting for the judge: {pending} item(s) still to answer")
        else:
            self.stage.stop.set()
        self.pool.shutdown(wait=wait, cancel_futures=not wait)


def open_feed(config, out_dir: Path, redis, namespace: str) -> JudgeFeed | None:
    """A feed when the run's evaluate section asks a judge, else None."""
    evaluate = config.evaluate
    if evaluate is None or evaluate.judge is None or not evaluate.preset or not PRESETS[evaluate.preset].uses_judge:
        return None
    cfg, preset = evaluate.judge, PRESETS[evaluate.preset]
    template = Path(cfg.template or default_template(preset)).read_text(encoding="utf-8")
    settings = JudgeSettings(cfg.url, cfg.model, os.environ.get(cfg.api_key_env) if cfg.api_key_env else None,
                             cfg.temperature, cfg.seed, cfg.max_tokens, cfg.timeout_s, cfg.retries, cfg.backoff_s,
                             cfg.max_backoff_s)
    limiter = SharedRateLimit(redis, namespace, cfg.url, requests_per_minute=cfg.requests_per_minute,
                              tokens_per_minute=cfg.tokens_per_minute, burst=cfg.burst)
    cache = ScoreCache(evaluate.cache_dir or out_dir / layout.SCORES_CACHE)
    return JudgeFeed(JudgeStage(preset, settings, template, cache, limiter, workers=cfg.workers), out_dir,
                     cfg.workers)
