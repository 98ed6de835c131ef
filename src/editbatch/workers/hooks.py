"""Celery worker signals: load before consuming, announce when consuming, withdraw on shutdown.

Connected only in processes that bind a device (EDITBATCH_DEVICE set), so
producers and Flower importing the app never load a model.
"""

from __future__ import annotations

import logging
import os
import sys

from celery.signals import worker_init, worker_ready, worker_shutdown, worker_shutting_down

from . import activity, runtime  # noqa: F401  (activity: busy/idle in the presence record)

log = logging.getLogger("editbatch.worker")


@worker_init.connect
def _load_model(sender=None, **_) -> None:
    config = os.environ.get("EDITBATCH_CONFIG")
    if not config:
        sys.stderr.write("editbatch worker: EDITBATCH_CONFIG is not set (the run config naming the model)\n")
        os._exit(2)
    # worker_init comes before Celery sets up logging; set it up now (Celery's own
    # later call is then a no-op) so the model load is in the worker's log.
    if hasattr(sender, "setup_logging"):
        sender.setup_logging()
    try:
        runtime.start(os.environ.get("EDITBATCH_BROKER") or sender.app.conf.broker_url,
                      os.environ["EDITBATCH_DEVICE"], config)
    except Exception as exc:  # noqa: BLE001 - one line for the operator, then exit
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        from ..config import mask_password

        if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
            broker = mask_password(os.environ.get("EDITBATCH_BROKER") or sender.app.conf.broker_url)
            why = f"cannot reach Redis at {broker}: {exc}"
        else:
            why = f"model failed to load: {exc.__class__.__name__}: {exc}"
        sys.stderr.write(f"editbatch worker {os.environ['EDITBATCH_DEVICE']}: {why}\n")
        sys.stderr.flush()
        os._exit(3)


@worker_ready.connect
def _ready(**_) -> None:
    # Celery logs every success with its whole result at INFO: at thousands of
    # items that is most of the log. Failures are still logged (see tasks/edit.py).
    if logging.getLogger("celery.app.trace").getEffectiveLevel() <= logging.INFO:
        logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    runtime.announce_ready()


@worker_shutting_down.connect
def _shutting_down(**_) -> None:
    runtime.shutting_down.set()


@worker_shutdown.connect
def _withdraw(**_) -> None:
    runtime.stop()
