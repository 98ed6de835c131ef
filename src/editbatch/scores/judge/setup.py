"""A judge as a config names it: its settings, its prompt template, its stage, in one place.

Judge workers build their stage from their own config; the producer and
`editbatch score` build the same stage from theirs to learn the judge's
queue (its identity) and to record it: both sides agree when the judge, the
template and the decoding agree.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...config import EvaluateConfig, JudgeConfig
from ...errors import ConfigError
from ..presets import PRESETS

# The client (httpx) and the stage are imported where used: `asks_judge` is asked by every local run.


def asks_judge(evaluate: EvaluateConfig | None) -> bool:
    return bool(evaluate is not None and evaluate.judge is not None and evaluate.preset
                and PRESETS[evaluate.preset].uses_judge)


def settings_of(cfg: JudgeConfig):
    from .client import JudgeSettings

    return JudgeSettings(cfg.url, cfg.model, os.environ.get(cfg.api_key_env) if cfg.api_key_env else None,
                         cfg.temperature, cfg.seed, cfg.max_tokens, cfg.timeout_s, cfg.retries, cfg.backoff_s,
                         cfg.max_backoff_s)


def make_stage(evaluate: EvaluateConfig, source: str, *, redis=None, namespace: str = "editbatch"):
    """The judge of `evaluate` (a JudgeStage; it must ask one); with `redis`, under the shared limit held there."""
    from .stage import JudgeStage, default_template

    cfg, preset = evaluate.judge, PRESETS[evaluate.preset]
    path = Path(cfg.template or default_template(preset))
    try:
        template = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "evaluate.judge.template", f"{path}: cannot read ({exc.strerror})") from None
    limiter = None
    if redis is not None:
        from .ratelimit import SharedRateLimit

        limiter = SharedRateLimit(redis, namespace, cfg.url, requests_per_minute=cfg.requests_per_minute,
                                  tokens_per_minute=cfg.tokens_per_minute, burst=cfg.burst)
    return JudgeStage(preset, settings_of(cfg), template, None, limiter)


def answer_deadline_s(cfg: JudgeConfig) -> float:
    """The longest one item may take once a worker started it: every attempt timing out, every back-off at
    its cap (Retry-After waits are capped alike), plus a margin; past it the item is sent again."""
    settings = settings_of(cfg)
    waits = max(settings.max_backoff_s, settings.max_retry_after_s if cfg.retries else 0)
    return (cfg.retries + 1) * cfg.timeout_s + cfg.retries * waits + 30.0
