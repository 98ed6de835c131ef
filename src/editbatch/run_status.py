"""`editbatch status RUN_DIR`: how far a run is, from its files, and what each device does, from Redis.

The files (run.json, manifest.jsonl, summary.json) are enough for counts,
rate and ETA; the workers' presence records in Redis add per-device state.
Without a reachable Redis the devices are reported as unknown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import runstate
from .humanize import duration
from .counts import Counts, Tally
from .producer.resume import producer_alive
from .report.run_folder import read_run_folder
from .scheduling.metrics import Ratios


@dataclass
class RunStatus:
    run_id: str | None
    name: str
    folder: str
    state: str  # running, finished, cancelled, stopped (producer gone)
    counts: Counts
    rate: float | None  # items per second
    eta_s: float | None
    devices: dict[str, str] = field(default_factory=dict)  # queue -> state text
    note: str | None = None
    ratios: Ratios | None = None  # a finished run's efficiency and overhead (or why they do not apply)


def _device_states(broker: str, namespace: str, devices: list[str], run_id: str | None) -> dict[str, str]:
    from .redisconn import connect
    from .workers.presence import read_workers

    redis = connect(broker)
    try:
        records = read_workers(redis, namespace, devices)
    finally:
        redis.close()
    now = time.time()
    states = {}
    for queue, record in records.items():
        if record is None:
            states[queue] = "gone (no worker record)"
        elif record.get("state") != "ready":
            states[queue] = record.get("state") or "unknown"
        elif record.get("task"):
            other = f" of run {record['task_run']}" if record.get("task_run") not in (None, run_id) else ""
            states[queue] = f"busy: {record['task']}{other} for {now - record['busy_since']:.0f}s"
        else:
            states[queue] = "idle"
    return states


def read_status(run_dir: str, broker: str | None = None) -> RunStatus:
    folder = read_run_folder(run_dir)
    run, summary = folder.run, folder.summary
    tally, ran, first = Tally(), 0, None
    for r in folder.records():  # one pass: a 100,000-item manifest is not held
        tally.add(r)
        if r.get("finished_at") and r.get("status") != "invalid":
            ran += 1
            if r.get("started_at") and (first is None or r["started_at"] < first):
                first = r["started_at"]
    tally = tally.counts(total=run.get("items") or summary.get("items") or len(tally.last))
    finished = bool(summary) or run.get("state") in runstate.OVER  # a summary left by an earlier run is dropped
    if finished:
        state = "cancelled" if (run.get("state") or summary.get("state")) == runstate.CANCELLED else "finished"
    else:
        state = {True: "running", False: "stopped (producer gone)", None: "running?"}[producer_alive(run)]
    start = summary.get("started_at") or first
    end = summary.get("finished_at") if finished else time.time()
    rate = ran / (end - start) if ran and start and end and end > start else None
    eta = tally.pending / rate if rate and not finished else (0.0 if finished else None)
    status = RunStatus(run.get("run_id") or summary.get("run_id"), folder.name, str(folder.path), state, tally,
                       rate, eta)
    if finished and summary:
        status.ratios = Ratios.of(summary)
    devices = folder.devices
    url = broker or (run.get("broker") if "***" not in (run.get("broker") or "***") else None)
    if finished:
        status.devices = {d: "done" for d in devices}
    elif not url:
        status.devices = {d: "unknown" for d in devices}
        status.note = "devices unknown: pass --broker URL or set EDITBATCH_BROKER to read their state from Redis"
    else:
        try:
            status.devices = _device_states(url, run.get("namespace") or "editbatch", devices, status.run_id)
        except Exception as exc:  # noqa: BLE001 - the files still tell most of the story
            status.devices = {d: "unknown" for d in devices}
            status.note = f"devices unknown: Redis not reachable ({exc.__class__.__name__}: {exc})"
    return status


def render_status(s: RunStatus) -> str:
    c = s.counts
    done = c.ok + c.failed + c.invalid  # not-run items are not done: a resume runs them
    pct = f" ({100 * done / c.total:.0f}%)" if c.total else ""
    lines = [
        f"run {s.run_id or '-'} ({s.name}): {s.state}",
        f"folder: {s.folder}",
        f"items: {done}/{c.total} done{pct}: {c.text()}",
        f"rate: {s.rate:.2f} items/s" if s.rate else "rate: -",
    ]
    if s.state not in ("finished", "cancelled"):
        lines.append(f"eta: {duration(s.eta_s)}" if s.eta_s is not None else "eta: -")
    if s.ratios is not None:
        lines.append(f"schedule: {s.ratios.text()}")
    lines.append("devices:")
    lines += [f"  {d}: {state}" for d, state in s.devices.items()]
    if s.note:
        lines.append(s.note)
    return "\n".join(lines)
