"""The worker's loaded state: its device, its model, and how it reports results.

Built once per worker process at start-up (`start`), used by every task.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis

from .. import clock, keys, redisconn, runstate
from ..config import ClusterConfig, ModelConfig, load_config
from ..devices import Device, parse_device
from ..models.base import EditModel
from ..models.identity import model_identity, shared_queue
from ..models.registry import get_model_class
from .device_slot import DeviceSlot
from .guard import Guard
from .loading import LoadSlots
from .presence import Presence
from .roots import Roots, roots_for

log = logging.getLogger("editbatch.worker")

# How long a worker keeps retrying Redis (a restart, a network blip) before failing the item;
# cut short once the worker is shutting down, so it never outlives its producer by a minute.
REDIS_RETRY_S = 60.0
shutting_down = threading.Event()
CLOCK_CHECK_S = 60.0


def keep_retrying(call):
    return redisconn.retrying(call, REDIS_RETRY_S, stop=shutting_down.is_set)


@dataclass
class WorkerRuntime:
    device: Device
    model_config: ModelConfig
    cluster: ClusterConfig
    model: EditModel
    redis: Redis
    presence: Presence
    host: str
    pid: int
    name: str
    load_started_at: float = 0.0
    load_finished_at: float = 0.0
    roots: Roots = Roots((), ())  # where tasks may read and write (see roots.py)
    max_pixels: int = 0  # inputs above this many pixels are refused undecoded
    model_slot: int = 0  # this device's position in cluster.devices (the simulated model's speed table)
    guard: Guard | None = None  # watchdog for stuck edits, retirement after repeated CUDA errors
    slot: DeviceSlot = field(default_factory=DeviceSlot)  # one task at a time on the device (device_slot.py)
    scorers: dict[str, Any] = field(default_factory=dict)  # evaluate spec (JSON) -> its loaded ItemScorer
    _loaded: tuple[Any, dict[str, Any]] = (None, {})  # (model_config, its identity)
    _clock: tuple[float, float | None] = (float("-inf"), None)  # (measured at, monotonic; this clock vs Redis's)

    @property
    def loaded(self) -> dict[str, Any]:
        """The identity of the model this worker holds now (it changes with a model switch, which sets a new
        `model_config`); worked out once per config, not on every task."""
        config, identity = self._loaded
        if config is not self.model_config:
            identity = model_identity(self.model_config)
            self._loaded = (self.model_config, identity)
        return identity

    @property
    def identity(self) -> dict[str, Any]:
        return {"device": self.device.queue, "worker": self.name, "host": self.host, "pid": self.pid}

    def item_scorer(self, spec: dict[str, Any]):
        """The metric scorer for `spec`, loaded once (through a load slot, like the model) and kept."""
        import json

        key = json.dumps({k: spec.get(k) for k in ("metrics", "clip", "dino")}, sort_keys=True)
        if key not in self.scorers:
            scorer = _new_scorer(spec, self.device)
            slots = LoadSlots(self.redis, self.cluster.namespace, self.cluster.load_concurrency)
            with slots.hold(self.name, timeout_s=self.cluster.ready_timeout_s):
                started = time.perf_counter()
                scorer.load()
            log.info("%s: scorers %s loaded on first use in %.2fs", self.name, ", ".join(scorer.metrics),
                     time.perf_counter() - started)
            self.scorers[key] = scorer
        return self.scorers[key]

    def clock_vs_redis(self) -> float | None:
        """This host's clock against Redis's (see clock.py), measured again at most once a minute."""
        measured_at, offset = self._clock
        if time.monotonic() - measured_at > CLOCK_CHECK_S:
            try:
                self._clock = (time.monotonic(), clock.versus_redis(self.redis))
            except redisconn.TRANSIENT:
                pass  # the last measure (or none) until Redis answers
        return self._clock[1]

    def check_key(self, key: str) -> None:
        """Only run keys of our namespace: a payload must not make us write elsewhere."""
        if not keys.is_run_key(self.cluster.namespace, key):
            raise ValueError(f"key {key!r} is outside namespace {self.cluster.namespace!r}")

    def run_ended(self, run_id: str | None) -> bool:
        """True once `run_id` is over (ended or cancelled): its tasks still queued here are skipped."""
        return bool(run_id) and keep_retrying(lambda: runstate.is_over(self.redis, self.cluster.namespace, run_id))

    def event_json(self, kind: str, index: int | None) -> str:
        """An event for the producer's inbox ("held", "started"): where an item is."""
        import json

        return json.dumps({"event": kind, "index": index, "device": self.device.queue, "pid": self.pid})

    def event(self, key: str, kind: str, index: int | None) -> None:
        """Tell the producer where an item is: one push to the run's inbox ("started" goes with the item's start,
        tasks/claim.py)."""
        self.check_key(key)
        try:
            self.redis.rpush(key, self.event_json(kind, index))
        except redisconn.TRANSIENT:
            pass  # a hint only: the producer finds the item by other means


_current: WorkerRuntime | None = None


def current() -> WorkerRuntime:
    if _current is None:
        raise RuntimeError("this process has no loaded model: start it with `editbatch worker` or EDITBATCH_DEVICE set")
    return _current


def start(broker_url: str, device_spec: str, config_path: str | Path) -> WorkerRuntime:
    """Bind the device, wait for a load slot, load the model once and announce readiness."""
    global _current
    config = load_config(config_path, check_dataset=False)
    device = parse_device(device_spec)
    redis = redisconn.connect(broker_url)
    host = socket.gethostname()
    name = f"{device.queue}@{host}"
    presence = Presence(redis, config.cluster.namespace, device.queue,
                        beat_redis=redisconn.quick(redis, keys.PRESENCE_BEAT_S))
    model_desc = model_identity(config.model)
    presence.publish(state="loading", device=device.queue, queue=device.queue, host=host, pid=os.getpid(),
                     worker=name, model=model_desc, shared_queue=shared_queue(model_desc), load="cold",
                     load_started_at=None, load_finished_at=None)
    if device.kind == "cpu":
        # A fixed count, not a share of the cores: float reductions split over another
        # number of threads round differently, and outputs must not depend on how
        # many workers run. Set before the adapter imports torch.
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(config.cluster.cpu_threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(config.cluster.cpu_threads)
    slots = LoadSlots(redis, config.cluster.namespace, config.cluster.load_concurrency)
    try:
        model = get_model_class(config.model.type)(config.model, device)
        slots_by_queue = [d.queue for d in config.devices]
        model.slot = slots_by_queue.index(device.queue) if device.queue in slots_by_queue else 0
        model.prepare()
        with slots.hold(name, timeout_s=config.cluster.ready_timeout_s):
            started = time.time()
            presence.publish(load_started_at=started)
            log.info("%s: model load started: %s (%s, dtype %s)", name, config.model.type, config.model.path,
                     config.model.dtype)
            model.load()
            scorer = _worker_scorer(config, device)  # the run's metrics: loaded with the model, in its load time
            finished = time.time()
    except Exception as exc:
        presence.publish(state="failed", error=f"{exc.__class__.__name__}: {exc}")
        raise
    log.info("%s: model load finished: %s (%s) loaded in %.2fs", name, config.model.type, config.model.path,
             finished - started)
    _warm_up()
    roots = roots_for(config)
    log.info("%s: reads images under %s; writes under %s", name, ", ".join(roots.inputs), ", ".join(roots.outputs))
    _current = WorkerRuntime(device, config.model, config.cluster, model, redis, presence, host, os.getpid(), name,
                             started, finished, roots, config.dataset.max_pixels, model.slot,
                             Guard(name, presence, sick_after=config.cluster.sick_after),
                             slot=DeviceSlot(on_busy=_show_busy))
    if scorer is not None:
        log.info("%s: scorers %s loaded with the model (in its load slot and load time)", name,
                 ", ".join(scorer.metrics))
        _current.scorers[_spec_key(scorer)] = scorer
    # Published so that a coordinator can tell whether the jobs it accepts are within reach of this worker.
    presence.publish(load_finished_at=finished, input_roots=list(roots.inputs), output_roots=list(roots.outputs))
    return _current


def _warm_up() -> None:
    """Encode and decode a tiny PNG and a thumbnail now: PIL imports its codecs on first use, which took
    0.2-0.3 s in a busy worker's first item, with the next item's fetch waiting behind it."""
    import io

    from PIL import Image

    from ..report.thumbnails import encode

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", compress_level=1)
    Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    encode(Image.new("RGB", (8, 8)))


def _show_busy(what: dict | None) -> None:
    from .activity import show_busy

    show_busy(what)


def _new_scorer(spec: dict[str, Any], device: Device):
    from ..scores.item import ItemScorer

    # CUDA_VISIBLE_DEVICES binds the worker's GPU, so it is always device 0 within the process
    return ItemScorer.from_spec(spec, "cuda:0" if device.kind == "cuda" else "cpu")


def _spec_key(scorer) -> str:
    import json

    return json.dumps({"metrics": list(scorer.metrics), "clip": scorer.clip_path, "dino": scorer.dino_path},
                      sort_keys=True)


def _worker_scorer(config, device: Device):
    """The scorer of the worker's own config's `evaluate` metrics, loaded now (None when it names none)."""
    evaluate = config.evaluate
    if evaluate is None or not evaluate.all_metrics():
        return None
    scorer = _new_scorer({"metrics": evaluate.all_metrics(), "clip": evaluate.clip, "dino": evaluate.dino}, device)
    scorer.load()
    return scorer


def announce_ready() -> None:
    runtime = current()
    runtime.presence.publish(state="ready", ready_at=time.time())


def stop() -> None:
    if _current is not None:
        _current.presence.withdraw()
