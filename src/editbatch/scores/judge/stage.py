"""The judge stage: each edited item asked once (cache first), by a pool of threads under the shared limit.

Threads, because a judge worker waits on the network, not on a device. Every
outcome that a second ask would repeat (an answer, a refusal, an answer
that does not parse) is cached under the item's full key before the next
item is taken, so a stage killed and run again asks only what had no
answer yet. Timeouts and server errors are not cached: a later run asks again.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

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
                 limiter: SharedRateLimit | None, *, workers: int = 4):
        self.preset = preset
        self.settings = settings
        self.template = template
        self.template_sha256 = hashlib.sha256(template.encode()).hexdigest()
        self.cache = cache
        self.limiter = limiter
        self.workers = workers
        self.stop = threading.Event()

    @property
    def identity(self) -> dict[str, Any]:
        """Recorded with every answer and in scores.json; also part of each cache key."""
        return {"scorer": "judge", "version": JUDGE_VERSION, "preset": self.preset.name, "model": self.settings.model,
                "template_sha256": self.template_sha256, "decoding": self.settings.decoding}

    def key(self, job: JudgeJob, output_digest: str) -> str:
        return score_key(**self.identity, output=output_digest, inputs=[file_digest(p) for p in job.inputs],
                         target=file_digest(job.target), instruction=job.instruction,
                         fields={k: v for k, v in job.fields.items() if isinstance(v, (str, int, float))})

    def judge(self, job: JudgeJob) -> dict[str, Any]:
        output = load_rgb(job.output)
        key = self.key(job, image_digest(output))
        found = self.cache.get(key) if self.cache is not None else None
        if found is not None:
            return {**found, "cached": True}
        prompt = self.template.format_map(_Blank(job.fields, instruction=job.instruction))
        images = [load_rgb(p) for p in job.inputs] + [output]
        tokens = estimate_tokens(prompt, len(images), self.settings.max_tokens)
        acquire = (lambda: self.limiter.acquire(tokens, stop=self.stop.is_set)) if self.limiter else (lambda: None)
        outcome = ask(self.settings, request_body(self.settings, prompt, images),
                      lambda text: parse_answer(self.preset, text), acquire=acquire)
        record = {"id": job.id, **outcome.to_dict(), "model": self.settings.model,
                  "template_sha256": self.template_sha256}
        if self.cache is not None and outcome.status in CACHED_STATUSES:
            self.cache.put(key, record)
        return record

    def run(self, jobs: list[JudgeJob], on_done: Callable[[JudgeJob, dict[str, Any]], None]) -> None:
        """Judge every job; `on_done` is called (from the pool's threads, one at a time) as each ends."""
        lock = threading.Lock()

        def one(job: JudgeJob) -> None:
            if self.stop.is_set():
                return
            try:
                record = self.judge(job)
            except InterruptedError:
                return
            except Exception as exc:  # noqa: BLE001 - one item (an unreadable output) must not stop the others
                record = {"id": job.id, "status": "error", "scores": None, "reason": "", "raw": None,
                          "error": f"{exc.__class__.__name__}: {exc}", "attempts": 0}
            with lock:
                on_done(job, record)

        with ThreadPoolExecutor(self.workers, thread_name_prefix="judge") as pool:
            for future in [pool.submit(one, job) for job in jobs]:
                future.result()


def load_rgb(path: Path):
    return _load_rgb(path, DEFAULT_MAX_PIXELS)
