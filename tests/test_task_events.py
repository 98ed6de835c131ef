"""Celery task events, as Flower receives them: every task's events arrive, in batches a worker sends at most
every 0.1 s (workers/consumer.py) instead of one publish per event."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import defaultdict

from redis import Redis



def decode(raw: bytes) -> list[dict]:
    """The events in one message of Celery's event exchange (Kombu's envelope; a task-multi body is a list)."""
    envelope = json.loads(raw)
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    events = json.loads(body)
    return events if isinstance(events, list) else [events]


def test_task_events_all_arrive_in_batches(sim_cluster, sim_run):
    redis = Redis.from_url(sim_cluster["url"])
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("*celeryev/task.*")
    messages: list[tuple[float, list[dict]]] = []  # (received at, its events)
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message is not None:
                messages.append((time.monotonic(), decode(message["data"])))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        proc, manifest, summary = sim_run(60, mode="nosync", params={"seconds": 0.0})
        assert proc.returncode == 0 and summary["ok"] == 60, proc.stderr
        run = f"run={summary['run_id']}"
        # The run's tasks, from their received events (which carry the arguments); their other events by uuid.
        deadline = time.monotonic() + 10
        while True:
            events = [e for _, batch in list(messages) for e in batch]
            ours = {e["uuid"] for e in events if e["type"] == "task-received" and run in (e.get("args") or "")}
            kinds = defaultdict(set)
            for e in events:
                if e.get("uuid") in ours:
                    kinds[e["uuid"]].add(e["type"])
            complete = [u for u in ours if {"task-received", "task-started", "task-succeeded"} <= kinds[u]]
            # The last events of an idle worker come with no more work behind them: its timed flush sends them.
            if (len(complete) >= 60 and len(ours) == len(complete)) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(ours) >= 60 and len(complete) == len(ours)
    finally:
        stop.set()
        listener.join(5)
        pubsub.close()
        redis.close()
    # Batches: a busy worker's events of 0.1 s go in one message, so the run's 180 worker events (with the
    # other workers' events of those seconds) took 8-13 per message here; one publish per event gave 1.3.
    # The producer's task-sent events are its own, one message each.
    carried = [len(batch) for _, batch in messages if batch[0]["type"] != "task-sent"]
    assert sum(carried) >= 180
    assert len(carried) <= sum(carried) / 3, carried
