"""Celery worker signals of a judge worker: build the judge before consuming, announce, withdraw on shutdown.

Connected only in processes started as judge workers (EDITBATCH_JUDGE set).
"""

from __future__ import annotations

import logging
import os
import sys

from celery.signals import worker_init, worker_ready, worker_shutdown, worker_shutting_down

from . import judging


@worker_init.connect
def _start(sender=None, **_) -> None:
    if hasattr(sender, "setup_logging"):
        sender.setup_logging()
    try:
        judging.start(os.environ.get("EDITBATCH_BROKER") or sender.app.conf.broker_url, os.environ["EDITBATCH_CONFIG"])
    except Exception as exc:  # noqa: BLE001 - one line for the operator, then exit
        sys.stderr.write(f"editbatch judge-worker: {exc.__class__.__name__}: {exc}\n")
        sys.stderr.flush()
        os._exit(3)


@worker_ready.connect
def _ready(**_) -> None:
    if logging.getLogger("celery.app.trace").getEffectiveLevel() <= logging.INFO:
        logging.getLogger("celery.app.trace").setLevel(logging.WARNING)  # one line per item is ours (tasks/judge.py)
    judging.announce_ready()


@worker_shutting_down.connect
def _shutting_down(**_) -> None:
    judging.shutting_down.set()


@worker_shutdown.connect
def _withdraw(**_) -> None:
    judging.stop()
