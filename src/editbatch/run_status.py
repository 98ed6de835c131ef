"""`editbatch status RUN_DIR`: how far a run is, from its files, and what each device does, from Redis.

The files (run.json, manifest.jsonl, summary.json) are enough for counts,
rate and ETA; the workers' presence records in Redis add per-device state.
Without a reachable Redis the devices are reported as unknown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .producer.resume import producer_alive
from .report.run_folder import read_run_folder


@dataclass
class RunStatus:
    run_id: str | None
    name: str
    folder: str
    state: str  # running, finished, stopped, unknown
    total: int
    done: int
    ok: int
    failed: int
    invalid: int
    rate: float | None  # items per second
    eta_s: float | None
    devices: dict[str, str] = field(default_factory=dict)  # queue -> state text
    note: str | None = None


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
    run, summary, records = folder.run, folder.summary, folder.manifest
    counts = {s: sum(1 for r in records if r.get("status") == s) for s in ("ok", "failed", "invalid")}
    total = run.get("items") or summary.get("items") or len(records)
    done = sum(counts.values())
    finished = bool(summary)  # the folder reader drops a summary left by an earlier run
    alive = producer_alive(run)
    state = "finished" if finished else {True: "running", False: "stopped (producer gone)", None: "running?"}[alive]
    ran = [r for r in records if r.get("finished_at") and r.get("status") != "invalid"]
    start = summary.get("started_at") or (min(r["started_at"] for r in ran if r.get("started_at")) if ran else None)
    end = summary.get("finished_at") if finished else time.time()
    rate = len(ran) / (end - start) if ran and start and end and end > start else None
    eta = (total - done) / rate if rate and not finished else (0.0 if finished else None)
    status = RunStatus(run.get("run_id") or summary.get("run_id"), folder.name, str(folder.path), state, total, done,
                       counts["ok"], counts["failed"], counts["invalid"], rate, eta)
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


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def render_status(s: RunStatus) -> str:
    pct = f" ({100 * s.done / s.total:.0f}%)" if s.total else ""
    lines = [
        f"run {s.run_id or '-'} ({s.name}): {s.state}",
        f"folder: {s.folder}",
        f"items: {s.done}/{s.total} done{pct}: {s.ok} ok, {s.failed} failed, {s.invalid} invalid",
        f"rate: {s.rate:.2f} items/s" if s.rate else "rate: -",
    ]
    if s.state != "finished":
        lines.append(f"eta: {_duration(s.eta_s)}" if s.eta_s is not None else "eta: -")
    lines.append("devices:")
    lines += [f"  {d}: {state}" for d, state in s.devices.items()]
    if s.note:
        lines.append(s.note)
    return "\n".join(lines)
