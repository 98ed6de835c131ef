"""summary.json: counts, and what the run's schedule cost, from the manifest's times."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from .. import counts
from ..scheduling import Policy, Timing, policy_class
from ..scheduling import metrics



def timing_of(record: dict[str, Any], ordinal_of: dict[int, int]) -> Timing | None:
    """The timing of an item this run computed on a device (ok, or failed inside the model)."""
    if (record["index"] in ordinal_of and record.get("started_at") is not None and record.get("device")
            and not record.get("reused")):  # reused items ran earlier (or elsewhere)
        return Timing(ordinal_of[record["index"]], record["device"], record["started_at"], record["finished_at"],
                      batch=record.get("batch"), submitted_at=record.get("submitted_at"), work_s=record.get("work_s"))
    return None


def summarize(records: Iterable[dict[str, Any]], *, mode: str, devices: list[str], ordinal_of: dict[int, int],
              dispatch_started_at: float, policy_factory: Callable[[], Policy], extra: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """One pass over `records` (a manifest being rewritten streams through): a status and a timing per item kept."""
    tally, timings, reused = counts.Tally(), [], 0
    for r in records:
        tally.add(r)
        reused += bool(r.get("reused"))
        timing = timing_of(r, ordinal_of)
        if timing is not None:
            timings.append(timing)
    total = tally.counts()
    synchronised = policy_class(mode).synchronised  # barrier idle is this mode's own cost
    span = metrics.makespan(timings, since=dispatch_started_at) if timings else 0.0
    lower = metrics.lower_bound(timings, devices)
    ideal = metrics.ideal_makespan(timings, devices, policy_factory) if len(timings) == len(ordinal_of) else None
    idle = metrics.barrier_idle(timings) if synchronised else {}
    wait = metrics.median_queue_wait(timings)
    ratios = metrics.ratios(timings, span, lower, ideal)
    summary: dict[str, Any] = {
        "mode": mode,
        "items": total.total,
        "ok": total.ok,
        "failed": total.failed,
        "invalid": total.invalid,
        "not_run": total.not_run,
        "reused": reused,
        "devices": devices,
        "makespan_s": round(span, 4),
        "busy_s": {d: round(v, 4) for d, v in metrics.busy_by_device(timings, devices).items()},
        "barrier_idle_s": round(sum(idle.values()), 4) if synchronised else None,
        "barrier_idle_by_device_s": {d: round(v, 4) for d, v in idle.items()} if synchronised else None,
        "barrier_release_s": round(sum(metrics.barrier_release(timings)), 4) if synchronised else None,
        "lower_bound_s": round(lower, 4),
        "efficiency": round(ratios.efficiency, 4) if ratios.efficiency is not None else None,
        "ideal_s": round(ideal, 4) if ideal is not None else None,
        "overhead": round(ratios.overhead, 4) if ratios.overhead is not None else None,
        "not_applicable": ratios.not_applicable,  # why efficiency and overhead are null
        "max_skew_observed": round(metrics.max_skew(timings, len(devices)), 4),
        "median_queue_wait_s": round(wait, 4) if wait is not None else None,
    }
    summary.update(extra or {})
    return summary
