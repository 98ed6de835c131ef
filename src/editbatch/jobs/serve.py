"""`editbatch serve --config CLUSTER.yaml`: the coordinator process, optionally with its workers.

The cluster config is a run config without a dataset: its `cluster` section
names the broker, the devices and the roots jobs may use, `model` the model
workers start with, and `jobs` the limits. The coordinator takes jobs from
the job store (coordinator.py) and is also a small Celery worker of the
`jobs` queue, whose `editbatch.job` task puts jobs into that store.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import yaml

from ..config import RunConfig, config_from_mapping, dump_config, worker_placeholders
from ..errors import ConfigError

FRONT_DOOR_THREADS = 2  # threads of the Celery worker that serves the `editbatch.job` task


def load_cluster_config(path: str | Path, overrides: list[str] = (), broker: str | None = None) -> RunConfig:
    source = str(path)
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read config file: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise ConfigError(source, None, "top level must be a mapping of keys to values")
    for field in ("output_roots", "input_roots"):
        if not (data.get("cluster") or {}).get(field):
            raise ConfigError(source, f"cluster.{field}", "editbatch serve needs the folders jobs may use")
    data = worker_placeholders(data, Path(path))
    config = config_from_mapping(data, source, overrides, check_dataset=False)
    broker = broker or os.environ.get("EDITBATCH_BROKER") or config.cluster.broker
    if broker == "auto":
        raise ConfigError(source, "cluster.broker", "editbatch serve needs a Redis it can share with clients "
                                                    "(with appendonly yes): give its URL, or set EDITBATCH_BROKER")
    return config.model_copy(update={"cluster": config.cluster.model_copy(update={"broker": broker})})


def serve(path: str | Path, *, overrides: list[str] = (), broker: str | None = None, start_workers: bool = False,
          log_dir: Path | None = None, loglevel: str = "INFO") -> int:
    config = load_cluster_config(path, overrides, broker)
    broker = config.cluster.broker
    os.environ["EDITBATCH_BROKER"] = broker
    os.environ.pop("EDITBATCH_DEVICE", None)  # this process loads no model
    with contextlib.ExitStack() as stack:
        if start_workers:
            from ..cluster.local import LocalCluster

            log_dir = Path(log_dir or Path(path).resolve().parent / "serve-logs")
            log_dir.mkdir(parents=True, exist_ok=True)
            worker_config = log_dir / "cluster.resolved.yaml"
            worker_config.write_text(dump_config(config, redact=True), encoding="utf-8")
            cluster = stack.enter_context(LocalCluster(worker_config, config.devices, log_dir, broker=broker))
            cluster.start()
        _run_coordinator(config, broker, loglevel)
    return 0


def _run_coordinator(config: RunConfig, broker: str, loglevel: str) -> None:
    from celery.signals import worker_ready, worker_shutting_down

    from ..celery_app import app
    from .coordinator import Coordinator

    coordinator = Coordinator(config, broker)
    coordinator.check_workers()  # before taking any job: workers already up must reach the coordinator's roots

    def ready(**_) -> None:
        # Celery logs every success with its whole result (a summary) at INFO; failures stay logged.
        import logging

        logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
        coordinator.start()

    worker_ready.connect(ready, weak=False)
    worker_shutting_down.connect(lambda **_: coordinator.stopping.set(), weak=False)
    try:
        # The job task only queues a job and returns: a couple of threads serve any queue length.
        app.worker_main([
            "worker", "--pool", "threads", "--concurrency", str(FRONT_DOOR_THREADS), "--prefetch-multiplier", "1",
            "--queues", config.jobs.queue, "--hostname", f"{config.jobs.queue}@%h", "--without-mingle",
            "--without-gossip", "--loglevel", loglevel,
        ])
    finally:
        coordinator.stop()
