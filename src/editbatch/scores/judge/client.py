"""One judge question over an OpenAI-compatible chat API, with retries; every ending recorded as what it was.

Outcomes: `ok` (scores parsed), `refused` (a content filter: HTTP 400 with
the filter error, or finish_reason content_filter), `unparsed` (an answer
that is not the JSON asked for), `timeout` (no answer within the retries),
`error` (the server kept failing, or refused the request itself). Only `ok`
has scores: nothing is guessed. Each keeps the raw reply.

Retries: a 429 waits Retry-After (capped); 5xx, timeouts and refused
connections back off exponentially with jitter, capped; at most
`retries` times. httpx is used directly (one POST, no client-side retries
of its own, so the policy here is the only one).
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
from PIL import Image

FILTER_CODES = {"content_filter", "content_policy_violation", "responsible_ai_policy_violation"}
RAW_LIMIT = 2000  # characters of a raw reply kept in the record


@dataclass(frozen=True)
class JudgeSettings:
    url: str  # base URL, e.g. https://api.openai.com/v1
    model: str  # dated, e.g. gpt-4.1-2025-04-14
    api_key: str | None = None
    temperature: float = 0.0
    seed: int | None = 42
    max_tokens: int = 400
    timeout_s: float = 60.0
    retries: int = 6
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 120.0

    @property
    def decoding(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "seed": self.seed, "max_tokens": self.max_tokens}


@dataclass
class Outcome:
    status: str
    scores: dict[str, float] | None = None
    reason: str = ""
    raw: str | None = None
    error: str | None = None
    attempts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "scores": self.scores, "reason": self.reason, "raw": self.raw,
                "error": self.error, "attempts": self.attempts}


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def request_body(settings: JudgeSettings, prompt: str, images: list[Image.Image]) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
    content += [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in images]
    body: dict[str, Any] = {"model": settings.model, "messages": [{"role": "user", "content": content}],
                            "temperature": settings.temperature, "max_tokens": settings.max_tokens}
    if settings.seed is not None:
        body["seed"] = settings.seed
    return body


def estimate_tokens(prompt: str, images: int, max_tokens: int) -> int:
    """What a request may cost against a tokens-per-minute limit (prompt, a tile per image, the answer)."""
    return len(prompt) // 4 + 85 * images + max_tokens


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


def backoff(settings: JudgeSettings, attempt: int, rng: random.Random) -> float:
    # "Equal jitter": half the delay fixed (the retries then span a known time), half random (no herd).
    delay = min(settings.max_backoff_s, settings.backoff_s * 2**attempt)
    return delay / 2 + rng.uniform(0, delay / 2)


def _clip(text: str | None) -> str | None:
    return text if text is None or len(text) <= RAW_LIMIT else text[:RAW_LIMIT] + "..."


def _refusal(response: httpx.Response) -> bool:
    try:
        err = response.json().get("error") or {}
    except ValueError:
        return False
    inner = err.get("innererror") or {}
    return str(err.get("code")) in FILTER_CODES or str(inner.get("code", "")).lower().startswith("responsibleai")


def ask(settings: JudgeSettings, body: dict[str, Any], parse: Callable[[str], tuple[dict[str, float], str]], *,
        acquire: Callable[[], None] = lambda: None, client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> Outcome:
    """Ask until an answer, a refusal, or the retries run out."""
    rng = rng or random.Random()
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    own = client is None
    client = client or httpx.Client(timeout=settings.timeout_s)
    last = Outcome("error", error="not asked")
    wait = 0.0
    try:
        for attempt in range(settings.retries + 1):
            if attempt:
                sleep(wait)
            acquire()
            last.attempts = attempt + 1
            try:
                response = client.post(settings.url.rstrip("/") + "/chat/completions", json=body, headers=headers,
                                       timeout=settings.timeout_s)
            except httpx.TimeoutException as exc:
                last = Outcome("timeout", error=f"no answer within {settings.timeout_s:g}s ({exc.__class__.__name__})",
                               attempts=attempt + 1)
                wait = backoff(settings, attempt, rng)
                continue
            except httpx.TransportError as exc:
                last = Outcome("error", error=f"cannot reach the judge: {exc.__class__.__name__}: {exc}",
                               attempts=attempt + 1)
                wait = backoff(settings, attempt, rng)
                continue
            text = response.text
            if response.status_code == 429:
                after = retry_after(response)
                wait = min(after, settings.max_retry_after_s) if after is not None else backoff(settings, attempt, rng)
                last = Outcome("error", error="rate limited (429) after every retry", raw=_clip(text),
                               attempts=attempt + 1)
                continue
            if response.status_code == 400 and _refusal(response):
                return Outcome("refused", error="refused by the content filter (HTTP 400)", raw=_clip(text),
                               attempts=attempt + 1)
            if response.status_code >= 500 or response.status_code == 408:
                last = Outcome("error", error=f"HTTP {response.status_code} after every retry", raw=_clip(text),
                               attempts=attempt + 1)
                wait = backoff(settings, attempt, rng)
                continue
            if response.status_code != 200:
                return Outcome("error", error=f"HTTP {response.status_code}: the request was refused",
                               raw=_clip(text), attempts=attempt + 1)
            return _answer(text, parse, attempt + 1)
        return last
    finally:
        if own:
            client.close()


def _answer(text: str, parse, attempts: int) -> Outcome:
    try:
        choice = (json.loads(text).get("choices") or [{}])[0]
    except (ValueError, AttributeError, IndexError):
        return Outcome("unparsed", error="the reply is not a chat completion (not JSON)", raw=_clip(text),
                       attempts=attempts)
    if choice.get("finish_reason") == "content_filter":
        return Outcome("refused", error="refused by the content filter (finish_reason)", raw=_clip(text),
                       attempts=attempts)
    content = (choice.get("message") or {}).get("content")
    if not isinstance(content, str):
        return Outcome("unparsed", error="the reply has no message content", raw=_clip(text), attempts=attempts)
    try:
        scores, reason = parse(content)
    except ValueError as exc:
        return Outcome("unparsed", error=f"the answer does not parse: {exc}", raw=_clip(content), attempts=attempts)
    return Outcome("ok", scores=scores, reason=reason, raw=_clip(content), attempts=attempts)
