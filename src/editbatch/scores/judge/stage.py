"""The judge of one item: the cache first, then one question under the shared limit, then the cache again.

Judge worker processes (workers/judging.py) call `JudgeStage.judge` for each
`editbatch.judge` task. Every outcome that a second ask would repeat (an
answer, a refusal, an answer that does not parse) is cached under the item's
full key before the result is reported, so an item sent again (its worker
killed, the producer resumed) asks only if it had no answer yet. Timeouts
and server errors are not cached: a later run asks again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

from ...config import DEFAULT_MAX_PIXELS
from ...imageio import load_rgb as _load_rgb
from ..cache import ScoreCache, file_digest, score_key
from ..item import image_digest
from ..presets import Preset, parse_answer
from .client import JudgeSettings, ask, estimate_tokens, request_body
from .ratelimit import SharedRateLimit

JUDGE_VERSION = 1
CACHED_STATUSES = ("ok", "refused", "unparsed")  # asking again would give the same
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@dataclass
class JudgeJob:
    id: str
    instruction: str
    output: Path
    inputs: list[Path]
    target: Path | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # the dataset's other columns, for the template


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return ""


def check_template(text: str) -> None:
    """ValueError when the template's braces do not format (literal braces, as in a JSON example, are doubled)."""
    try:
        text.format_map(_Blank())
    except (ValueError, IndexError, AttributeError) as exc:
        raise ValueError(f"the template does not format ({exc}); write literal braces as {{{{ and }}}}") from None


def default_template(preset: Preset) -> Path:
    return TEMPLATES / f"{preset.name}.txt"


class JudgeStage:
    def __init__(self, preset: Preset, settings: JudgeSettings, template: str, cache: ScoreCache | None,
                 limiter: SharedRateLimit | None):
        self.preset = preset
        self.settings = settings
        self.template = template
        self.template_sha256 = hashlib.sha256(template.encode()).hexdigest()
        self.cache = cache
        self.limiter = limiter
        self.stop = threading.Event()  # set at shutdown: a wait for the rate limit ends
        # Held around each question (see asking.py: one asker across workers); none within one process.
        self.exclusive: Callable[[str], ContextManager[None]] = lambda key: contextlib.nullcontext()

    @property
    def identity(self) -> dict[str, Any]:
        """Recorded with every answer and in scores.json; also part of each cache key."""
        return {"scorer": "judge", "version": JUDGE_VERSION, "preset": self.preset.name, "model": self.settings.model,
                "template_sha256": self.template_sha256, "decoding": self.settings.decoding}

    @property
    def queue(self) -> str:
        """The Celery queue of this judge: workers of another judge (model, template, decoding) never take its items."""
        digest = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()
        return f"judge-{digest[:12]}"

    def key(self, job: JudgeJob, output_digest: str) -> str:
        return score_key(**self.identity, output=output_digest, inputs=[file_digest(p) for p in job.inputs],
                         target=file_digest(job.target), instruction=job.instruction,
                         fields={k: v for k, v in job.fields.items() if isinstance(v, (str, int, float))})

    def judge(self, job: JudgeJob, cache: ScoreCache | None = None) -> dict[str, Any]:
        """The item's record; `cache` (default: the stage's own) is read first and holds every final outcome."""
        cache = cache if cache is not None else self.cache
        output = load_rgb(job.output)
        key = self.key(job, image_digest(output))
        found = cache.get(key) if cache is not None else None
        if found is not None:
            return {**found, "cached": True}
        with self.exclusive(key):
            found = cache.get(key) if cache is not None else None  # answered by a copy that asked meanwhile
            if found is not None:
                return {**found, "cached": True}
            return self._ask(job, output, key, cache)

    def _ask(self, job: JudgeJob, output, key: str, cache: ScoreCache | None) -> dict[str, Any]:
        prompt = self.template.format_map(_Blank(job.fields, instruction=job.instruction))
        images = [load_rgb(p) for p in job.inputs] + [output]
        tokens = estimate_tokens(prompt, len(images), self.settings.max_tokens)
        acquire = (lambda: self.limiter.acquire(tokens, stop=self.stop.is_set)) if self.limiter else (lambda: None)
        outcome = ask(self.settings, request_body(self.settings, prompt, images),
                      lambda text: parse_answer(self.preset, text), acquire=acquire)
        record = {"id": job.id, **outcome.to_dict(), "model": self.settings.model,
                  "template_sha256": self.template_sha256}
        if cache is not None and outcome.status in CACHED_STATUSES:
            cache.put(key, record)
        return record


def load_rgb(path: Path):
    return _load_rgb(path, DEFAULT_MAX_PIXELS)
