"""What the producer reads in Redis to tell where its items are.

- the workers as `liveness` sees them (which devices live, and what each runs);
- the messages of this run still waiting in the queues (Kombu keeps each
  queue as a Redis list of JSON envelopes whose body holds the task's
  payload), so an item that is neither waiting nor held by a worker is
  known to be lost;
- the worker records in the output folder, so an item whose result was
  lost but whose output landed is taken as done rather than sent again.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Iterable

from redis import Redis

from .. import ledger, liveness


class RunWatch:
    def __init__(self, redis: Redis, namespace: str, run_id: str, output_dir: Path, *,
                 seeds: dict[int, int], ids: dict[int, str], model: dict[str, Any], shared: str):
        self.redis = redis
        self.namespace = namespace
        self.run_id = run_id
        self.output_dir = output_dir
        self.seeds = seeds
        self.ids = ids
        self.model = model
        self.shared = shared  # the shared queue of this run's model

    def look(self, queues: Iterable[str]) -> dict[str, liveness.Seen]:
        """Each named worker as the one liveness rule sees it now."""
        return liveness.look(self.redis, self.namespace, queues)

    def presence(self, queues: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        """Presence records of serving workers; None for a device whose worker is gone or not serving."""
        return {q: seen.record if seen.serving else None for q, seen in self.look(queues).items()}

    def queued(self, queues: Iterable[str]) -> set[int]:
        """Item indexes of this run whose messages wait in a queue (not yet taken by a worker)."""
        found: set[int] = set()
        names = sorted(set(queues) | {self.shared})
        with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.lrange(name, 0, -1)
            lists = pipe.execute()
        for raw in (m for messages in lists for m in messages):
            payload = _payload(raw)
            if payload and payload.get("run") == self.run_id and isinstance(payload.get("index"), int):
                found.add(payload["index"])
        return found

    def drop_queued(self, queue: str) -> int:
        """Take this run's messages out of a dead device's queue (they are sent again elsewhere)."""
        dropped = 0
        for raw in self.redis.lrange(queue, 0, -1):
            payload = _payload(raw)
            if payload and payload.get("run") == self.run_id:
                dropped += int(self.redis.lrem(queue, 1, raw))
        return dropped

    def done_record(self, index: int) -> dict[str, Any] | None:
        """The worker record of an item that finished ok in this folder, as a result."""
        return ledger.done_record(self.output_dir, self.ids[index], seed=self.seeds[index], model=self.model)


def _payload(raw: bytes) -> dict[str, Any] | None:
    """The editbatch.edit payload inside one Kombu message envelope, or None for anything else."""
    try:
        envelope = json.loads(raw)
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return args[0] if args and isinstance(args[0], dict) else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None
