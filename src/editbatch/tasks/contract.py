"""The `editbatch.edit` task contract: what callers send and what they get back.

Both directions are plain JSON objects. Images never travel through Redis:
the payload names input files, and the worker writes the output to
``<output_dir>/images/<safe id>.png`` on storage it shares with the caller.

Payload (version 1)::

    {"v": 1, "id": "cat-01", "images": ["/data/cat.jpg"], "instruction": "make it snow",
     "output_dir": "/runs/x", "seed": 1234,          # required
     "index": 0, "batch": null, "params": {},        # optional
     "model": {"type": "qwen_image_edit", "path": "..."},   # optional: refuse other models
     "run": null, "report": null, "submitted_at": null,     # used by `editbatch run`
     "wait_for": null, "arrive_at": null, "wait_timeout_s": null,   # sync-mode batch barrier
     "timeout_s": null,                                     # longest the edit may run
     "folder": null,                                        # the output folder's incarnation (run.json)
     "target": null, "texts": null, "evaluate": null,       # scores computed right after the edit
     "ticket": null}                                        # this copy, when the producer may take it back

Result::

    {"id", "index", "status": "ok" | "failed", "output": "images/cat-01.png" | null,
     "device", "worker", "host", "pid", "batch", "seed", "started_at", "finished_at",
     "submitted_at", "error": null | str, "info": {...}, "work_s": null | float,
     "attempt": int,                  # the fencing token of the attempt whose files the item has
     "scores": null | {"metrics": {...}, "score_s": float, "cached": bool},
     "reused": true, "superseded": true}   # only when taken from a record, and when this copy lost its claim

``started_at``/``finished_at`` are epoch seconds taken on the worker around
the model call. A failed item is a normal result with ``status: failed``;
the task itself only raises for a payload that breaks this contract.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

TASK_NAME = "editbatch.edit"
VERSION = 1
TICKET = re.compile(r"^[0-9.]{1,40}$")


class PayloadError(ValueError):
    """The payload does not follow the contract."""


@dataclass
class EditTask:
    id: str
    images: list[str]
    instruction: str
    output_dir: str
    seed: int
    index: int = 0
    batch: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] | None = None
    run: str | None = None
    report: str | None = None
    submitted_at: float | None = None
    wait_for: dict[str, Any] | None = None  # barrier of the previous batch: start only once it is done
    arrive_at: dict[str, Any] | None = None  # barrier of this item's batch: count in when finished
    wait_timeout_s: float | None = None
    timeout_s: float | None = None  # the edit itself: past this the worker ends itself (threads cannot be killed)
    folder: str | None = None  # the output folder's incarnation: claims of a folder since overwritten do not apply
    target: str | None = None  # the ground-truth image, for metrics against it
    texts: dict[str, str] | None = None  # input_caption / output_caption, for CLIP-T and CLIP direction
    evaluate: dict[str, Any] | None = None  # {"metrics": [...], "clip", "dino", "cache_dir"}: see tasks/scoring.py
    ticket: str | None = None  # names this copy of the task: see tasks/take_back.py

    def to_payload(self) -> dict[str, Any]:
        return {"v": VERSION, **asdict(self)}

    @classmethod
    def from_payload(cls, payload: Any) -> "EditTask":
        task = cls(**payload_fields(cls, payload, VERSION, ("id", "images", "instruction", "output_dir", "seed")))
        if not isinstance(task.images, list) or not all(isinstance(p, str) for p in task.images):
            raise PayloadError("'images' must be a list of file paths")
        if not isinstance(task.seed, int) or isinstance(task.seed, bool):
            raise PayloadError("'seed' must be an integer")
        if not isinstance(task.params, dict):
            raise PayloadError("'params' must be an object")
        if task.ticket is not None and not (isinstance(task.ticket, str) and TICKET.match(task.ticket)):
            raise PayloadError(f"'ticket' must be digits and dots, got {task.ticket!r}")
        return task


def payload_fields(cls: type, payload: Any, version: int, required: tuple[str, ...]) -> dict[str, Any]:
    """A payload's fields for dataclass `cls`, after the checks every task contract makes: a JSON object of
    this version, no unknown field, every required one present. Types are checked by each contract."""
    if not isinstance(payload, dict):
        raise PayloadError(f"payload must be a JSON object, got {type(payload).__name__}")
    if payload.get("v", version) != version:
        raise PayloadError(f"unsupported payload version {payload.get('v')!r} (this worker speaks {version})")
    unknown = sorted(set(payload) - set(cls.__dataclass_fields__) - {"v"})
    if unknown:
        raise PayloadError(f"unknown payload fields: {', '.join(unknown)}")
    missing = [k for k in required if k not in payload]
    if missing:
        raise PayloadError(f"missing payload fields: {', '.join(missing)}")
    return {k: v for k, v in payload.items() if k != "v"}
