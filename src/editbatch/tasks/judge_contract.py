"""The `editbatch.judge` task contract: one item for the judge, and what comes back.

Payload (version 1), plain JSON; images never travel, only their paths::

    {"v": 1, "id": "cat-01", "instruction": "make it snow", "output": "/runs/x/images/cat-01.png",
     "queue": "judge-0123abcd4567",          # the judge asked for (see JudgeStage.queue)
     "cache_dir": "/runs/x/.scores-cache",   # required
     "inputs": ["/data/cat.jpg"], "target": null, "fields": {},   # optional
     "run": null, "report": null}            # the producer's run and inbox

Result: the judge's record (``status`` ok | refused | unparsed | timeout |
error | skipped, ``scores``, ``reason``, ``raw``, ``error``, ``attempts``,
``model``, ``template_sha256``, ``cached``) plus ``id``, ``worker`` and
``pid``. Before asking, the worker pushes ``{"event": "started", "id",
"worker"}`` to the inbox, so the producer knows whom to watch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .contract import PayloadError, payload_fields

TASK_NAME = "editbatch.judge"
VERSION = 1


@dataclass
class JudgeTask:
    id: str
    instruction: str
    output: str
    queue: str
    cache_dir: str
    inputs: list[str] = field(default_factory=list)
    target: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    run: str | None = None
    report: str | None = None

    def to_payload(self) -> dict[str, Any]:
        return {"v": VERSION, **asdict(self)}

    @classmethod
    def from_payload(cls, payload: Any) -> "JudgeTask":
        task = cls(**payload_fields(cls, payload, VERSION, ("id", "instruction", "output", "queue", "cache_dir")))
        if not isinstance(task.inputs, list) or not all(isinstance(p, str) for p in task.inputs):
            raise PayloadError("'inputs' must be a list of file paths")
        if not isinstance(task.fields, dict):
            raise PayloadError("'fields' must be an object")
        return task
