"""The Celery application: settings in one place, nothing else.

`celery -A editbatch.celery_app worker` works as a plain Celery entry point:
with EDITBATCH_DEVICE (and EDITBATCH_CONFIG) set, the worker binds that
device, loads the model once and serves the device's queue plus the shared one;
with EDITBATCH_JUDGE set to a judge's queue, it is a judge worker (no model).
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

from . import redisconn
from .devices import SHARED_QUEUE, parse_device

TASK_MODULES = ["editbatch.tasks.edit", "editbatch.tasks.judge", "editbatch.workers.switching", "editbatch.jobs.task"]
DEFAULT_VISIBILITY_TIMEOUT_S = 6 * 3600


def visibility_timeout(config) -> float:
    """How long Redis keeps a delivered, unacknowledged message before handing it out again.

    It must exceed the longest edit (a late-acked task running longer would
    get a second, concurrent copy), so it follows `schedule.task_timeout_s`:
    `schedule.visibility_timeout_s`, else the larger of 6 h and 3x the task timeout.
    """
    chosen = config.schedule.visibility_timeout_s
    return chosen if chosen else max(DEFAULT_VISIBILITY_TIMEOUT_S, 3 * config.schedule.task_timeout_s)


def transport_options(visibility_timeout_s: float) -> dict:
    return {"visibility_timeout": int(visibility_timeout_s)}


def make_app(broker_url: str, *, visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S,
             task_events: bool = True) -> Celery:
    app = Celery("editbatch", broker=broker_url, backend=broker_url, include=TASK_MODULES)
    # Redis has no real acks: an unacked message is re-queued after this long (see visibility_timeout).
    transport = transport_options(visibility_timeout_s)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        result_expires=24 * 3600,
        task_default_queue=SHARED_QUEUE,
        # A job sent without a queue (Flower's send-task, a bare send_task) goes to the coordinator.
        task_routes={"editbatch.job": {"queue": "jobs"}},
        # Task events feed Flower; a worker sends them at most every 0.1 s (workers/consumer.py).
        worker_send_task_events=task_events,
        task_send_sent_event=task_events,
        worker_consumer="editbatch.workers.consumer:Consumer",  # task events sent in batches
        broker_connection_retry_on_startup=True,
        # Overnight runs: reconnect to a restarted Redis for as long as it takes (the default gives up
        # after 100 tries), and keep retrying a publish through a restart instead of failing the run.
        broker_connection_max_retries=None,
        task_publish_retry_policy={"max_retries": 300, "interval_start": 0.2, "interval_step": 0.2,
                                   "interval_max": 1.0, "errback": redisconn.publish_errback},
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    return app


def _bind_judge_from_env(app: Celery) -> bool:
    queue = os.environ.get("EDITBATCH_JUDGE")
    if not queue:
        return False
    app.conf.task_queues = [Queue(queue)]
    from .workers import judge_hooks  # noqa: F401  (connects the judge worker's signals)

    return True


def _bind_device_from_env(app: Celery) -> None:
    spec = os.environ.get("EDITBATCH_DEVICE")
    if not spec:
        return
    device = parse_device(spec)
    if device.kind == "cuda":
        # Before anything imports torch; an operator's own setting wins.
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", str(device.index))
    queues = [device.queue, SHARED_QUEUE]
    config_path = os.environ.get("EDITBATCH_CONFIG")
    if config_path:
        from .config import load_config
        from .models.identity import model_identity, shared_queue

        config = load_config(config_path, check_dataset=False)
        app.conf.worker_send_task_events = config.cluster.task_events
        app.conf.broker_transport_options = app.conf.result_backend_transport_options = \
            transport_options(visibility_timeout(config))
        queues.insert(1, shared_queue(model_identity(config.model)))
    app.conf.task_queues = [Queue(q) for q in queues]
    from .workers import hooks  # noqa: F401  (connects the worker signals)


app = make_app(os.environ.get("EDITBATCH_BROKER", "redis://localhost:6379/0"))
_bind_judge_from_env(app) or _bind_device_from_env(app)
