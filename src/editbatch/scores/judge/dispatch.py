"""The producer's side of the judge stage: one `editbatch.judge` task per item, the answers collected.

A collector thread reads the inbox where judge workers report. Each worker
says which item it starts; an item whose worker is gone (liveness.py: its
heartbeat stopped) or that has not answered by the deadline (every attempt
timing out, every back-off at its cap) is sent again, as is an item no
worker started while the queue is empty (its message was taken by a worker
that died before it could say so). Sending again asks nothing twice that
was answered: the worker caches every final outcome before it reports it,
and the task reads the cache first.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from celery import Celery
from redis import Redis

from ... import keys, liveness, redisconn
from ...errors import ClusterError
from ...producer.inbox import ResultInbox
from ...tasks.judge_contract import TASK_NAME, JudgeTask
from .stage import JudgeJob

CHECK_EVERY_S = 1.0
LOST_AFTER_S = 2 * keys.PRESENCE_TTL_S  # unstarted while the queue is empty this long: its message was lost
NO_WORKER_S = 120.0  # no judge worker serves the queue this long while items wait: give up


class JudgeDispatch:
    def __init__(self, app: Celery, redis: Redis, namespace: str, run_id: str, queue: str, cache_dir: Path, *,
                 deadline_s: float, say: Callable[[str], None] = lambda m: None):
        self.app = app
        self.redis = redis
        self.namespace = namespace
        self.run_id = run_id
        self.queue = queue
        self.cache_dir = str(Path(cache_dir).resolve())
        self.deadline_s = deadline_s
        self.say = say
        self.inbox_key = keys.judge_results(namespace, run_id)
        self.inbox = ResultInbox(redis, self.inbox_key)
        self.done: dict[str, dict[str, Any]] = {}  # item id -> the judge's record
        self.sent_again = 0
        self._pending: dict[str, JudgeTask] = {}
        self._held: dict[str, tuple[str, float]] = {}  # item id -> (its worker, when it started: monotonic)
        self._unseen_since: dict[str, float] = {}  # unstarted items while the queue is empty
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._changed = threading.Condition(self._lock)
        self._vantage = liveness.Vantage()
        self._no_worker_since: float | None = None
        self.failure: str | None = None
        self._thread = threading.Thread(target=self._collect, name="editbatch-judge-collector", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ sending

    def submit(self, job: JudgeJob) -> None:
        task = JudgeTask(job.id, job.instruction, str(Path(job.output).resolve()), self.queue, self.cache_dir,
                         [str(Path(p).resolve()) for p in job.inputs],
                         str(Path(job.target).resolve()) if job.target else None,
                         {k: v for k, v in job.fields.items() if isinstance(v, (str, int, float, bool)) or v is None},
                         self.run_id, self.inbox_key)
        with self._lock:
            if job.id in self._pending or job.id in self.done:
                return
            self._pending[job.id] = task
        self._send(task)

    def _send(self, task: JudgeTask) -> None:
        with self._send_lock:
            self.app.send_task(TASK_NAME, args=[task.to_payload()], queue=self.queue)

    # ------------------------------------------------------------ collecting

    def _collect(self) -> None:
        checked = 0.0
        while not self._stop.is_set():
            try:
                for message in self.inbox.get(CHECK_EVERY_S):
                    self._take(message)
                if time.monotonic() - checked >= CHECK_EVERY_S:
                    checked = time.monotonic()
                    self._check()
            except redisconn.TRANSIENT:
                time.sleep(CHECK_EVERY_S)  # Redis away: the workers' reports wait in the inbox
            except Exception as exc:  # noqa: BLE001 - the collector must outlive any one bad turn
                self.say(f"[editbatch] judge collector: {exc.__class__.__name__}: {exc}")
                time.sleep(CHECK_EVERY_S)

    def _take(self, message: dict[str, Any]) -> None:
        item = message.get("id")
        with self._lock:
            if item not in self._pending:
                return  # a copy sent again answered after the first: the first record stands
            if message.get("event") == "started":
                self._held[item] = (message.get("worker") or "", time.monotonic())
                self._unseen_since.pop(item, None)
                return
            if message.get("status") in ("skipped", "interrupted"):
                return
            record = {k: v for k, v in message.items() if k not in ("worker", "pid")}
            self.done[item] = record
            del self._pending[item]
            self._held.pop(item, None)
            self._changed.notify_all()

    def _check(self) -> None:
        """Send again what a gone worker held, what overran its deadline, and what was lost unstarted."""
        with self._lock:
            held = dict(self._held)
            unstarted = [i for i in self._pending if i not in self._held]
        names = set(self.redis.smembers(keys.judge_workers(self.namespace, self.queue)))
        names = {n.decode() if isinstance(n, bytes) else n for n in names} | {w for w, _ in held.values()}
        seen = liveness.look(self.redis, self.namespace, names)
        trust_silence = self._vantage.looked()
        now = time.monotonic()
        again: list[tuple[str, str]] = []
        for item, (worker, since) in held.items():
            gone = seen[worker].gone() if worker in seen and trust_silence else None
            if gone:
                again.append((item, gone))
            elif now - since > self.deadline_s:
                again.append((item, f"no answer within {self.deadline_s:.0f}s of its start"))
        queued = self.redis.llen(self.queue)
        for item in unstarted:
            if queued:
                self._unseen_since.pop(item, None)
            elif now - self._unseen_since.setdefault(item, now) > LOST_AFTER_S:
                again.append((item, "taken from the queue by a worker that never started it"))
        self._note_workers(any(s.serving for s in seen.values()), bool(self._pending), now)
        for item, why in again:
            with self._lock:
                task = self._pending.get(item)
                self._held.pop(item, None)
                self._unseen_since.pop(item, None)
            if task is not None:
                self.sent_again += 1
                self.say(f"[editbatch] judge: {item} sent again ({why})")
                self._send(task)

    def _note_workers(self, serving: bool, waiting: bool, now: float) -> None:
        if serving or not waiting:
            self._no_worker_since = None
            return
        if self._no_worker_since is None:
            self._no_worker_since = now
        elif now - self._no_worker_since > NO_WORKER_S:
            with self._lock:
                self.failure = (f"no judge worker has served queue {self.queue} for {NO_WORKER_S:.0f}s "
                                f"({len(self._pending)} item(s) waiting); start one: editbatch judge-worker "
                                f"--config CONFIG (the same evaluate.judge, template and decoding)")
                self._changed.notify_all()

    # ------------------------------------------------------------ ending

    def outstanding(self) -> int:
        with self._lock:
            return len(self._pending)

    def wait(self) -> None:
        """Until every item sent has its record; ClusterError when no judge worker serves the queue."""
        with self._lock:
            while self._pending and self.failure is None:
                self._changed.wait(1.0)
            if self.failure is not None and self._pending:
                raise ClusterError(self.failure)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(CHECK_EVERY_S * 3)
