"""A judge worker's state: its judge, its roots, its presence; no model, no device.

Built once per `editbatch judge-worker` process (`start`), used by every
`editbatch.judge` task on the process's threads. Its config is a run config,
or any config with an `evaluate:` section that asks a judge and
`cluster.input_roots` / `output_roots` (a judge worker needs no model or
dataset of its own). Presence works as for device workers (a record kept
alive by a heartbeat, see presence.py), one record per process, so a
killed judge worker is noticed by the producer (liveness.py) within seconds.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from redis import Redis

from .. import keys, redisconn, runstate
from ..config import RunConfig, config_from_mapping, worker_placeholders
from ..errors import ConfigError
from ..scores.judge.asking import OneAsker
from ..scores.judge.setup import asks_judge, make_stage
from ..scores.judge.stage import JudgeStage
from .presence import Presence
from .roots import Roots, inside, roots_for

log = logging.getLogger("editbatch.judge")

REDIS_RETRY_S = 60.0
shutting_down = threading.Event()
NO_MODEL = {"type": "simulated", "path": "none"}  # a judge worker's config needs no model: it never loads one


def load_judge_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The config of a judge worker, validated; ConfigError naming the file and field."""
    source = str(path)
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read config file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, None, f"not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(source, None, "top level must be a mapping of keys to values")
    data = worker_placeholders({"model": NO_MODEL, **data}, Path(path))
    config = config_from_mapping(data, source, overrides, check_dataset=False)
    if not asks_judge(config.evaluate):
        raise ConfigError(source, "evaluate", "a judge worker needs evaluate.preset (gedit, imgedit, kris) and "
                                              "evaluate.judge (url, model)")
    return config


@dataclass
class JudgeWorker:
    stage: JudgeStage
    redis: Redis
    presence: Presence
    roots: Roots
    namespace: str
    name: str
    pid: int

    def keep_retrying(self, call):
        return redisconn.retrying(call, REDIS_RETRY_S, stop=shutting_down.is_set)

    def run_ended(self, run_id: str | None) -> bool:
        return bool(run_id) and self.keep_retrying(lambda: runstate.is_over(self.redis, self.namespace, run_id))

    def confine(self, output: str, inputs: list[str], target: str | None, cache_dir: str) -> None:
        """Every file the item reads inside the input roots (its output may sit under an output root), and the
        cache it writes under an output root: whoever sent the task, nothing else is read or written."""
        if not inside(output, self.roots.inputs + self.roots.outputs):
            self.roots.check_input(output)  # raises, naming the roots
        for path in inputs + ([target] if target else []):
            self.roots.check_input(path)
        self.roots.check_output(cache_dir)

    def tell(self, key: str, message: dict[str, Any]) -> None:
        """One push to the producer's inbox (a run key of our namespace only, whatever the payload says)."""
        if not keys.is_run_key(self.namespace, key):
            raise ValueError(f"key {key!r} is outside namespace {self.namespace!r}")

        def push() -> None:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.rpush(key, json.dumps(message))
                pipe.expire(key, keys.RESULT_TTL_S)
                pipe.execute()

        self.keep_retrying(push)


_current: JudgeWorker | None = None


def current() -> JudgeWorker:
    if _current is None:
        raise RuntimeError("this process is no judge worker: start it with `editbatch judge-worker`")
    return _current


def start(broker_url: str, config_path: str | Path) -> JudgeWorker:
    """Build the judge from the config and announce the worker (no model to load: ready at once)."""
    global _current
    config = load_judge_config(config_path)
    redis = redisconn.connect(broker_url)
    namespace = config.cluster.namespace
    stage = make_stage(config.evaluate, str(config_path), redis=redis, namespace=namespace)
    host, pid = socket.gethostname(), os.getpid()
    name = f"judge-{pid}@{host}"
    roots = roots_for(config)
    presence = Presence(redis, namespace, name, beat_redis=redisconn.quick(redis, keys.PRESENCE_BEAT_S))
    presence.publish(state="loading", kind="judge", queue=stage.queue, host=host, pid=pid, worker=name,
                     judge=stage.identity, threads=config.evaluate.judge.workers,
                     input_roots=list(roots.inputs), output_roots=list(roots.outputs))
    with redis.pipeline(transaction=False) as pipe:
        pipe.sadd(keys.judge_workers(namespace, stage.queue), name)
        pipe.expire(keys.judge_workers(namespace, stage.queue), keys.RUN_STATE_TTL_S)  # forgotten when unused
        pipe.execute()
    log.info("%s: judge %s at %s on queue %s, %d thread(s); reads under %s; writes under %s", name,
             stage.settings.model, stage.settings.url, stage.queue, config.evaluate.judge.workers,
             ", ".join(roots.inputs), ", ".join(roots.outputs))
    stage.exclusive = OneAsker(redis, namespace, name, shutting_down.is_set)
    _current = JudgeWorker(stage, redis, presence, roots, namespace, name, pid)
    return _current


def announce_ready() -> None:
    current().presence.publish(state="ready")


def stop() -> None:
    shutting_down.set()
    if _current is not None:
        _current.stage.stop.set()
        _current.presence.withdraw()
