"""summary.json: counts, and what the run's schedule cost, from the manifest's times."""

from __future__ import annotations

from typing import Any, Callable

from .. import counts
from ..scheduling import Policy, Timing, policy_class
from ..scheduling import metrics


DEGENERATE_S = 1e-3


def timings_from(records: list[dict[str, Any]], ordinal_of: dict[int, int]) -> list[Timing]:
    """Timings of the items that ran on a device (ok or failed inside the model)."""
    out = []
    for r in records:
        if r["index"] in ordinal_of and r.get("started_at") is not None and r.get("device"):
            out.append(Timing(ordinal_of[r["index"]], r["device"], r["started_at"], r["finished_at"],
                              batch=r.get("batch"), submitted_at=r.get("submitted_at"), work_s=r.get("work_s")))
    return out


def summarize(records: list[dict[str, Any]], *, mode: str, devices: list[str], ordinal_of: dict[int, int],
              dispatch_started_at: float, policy_factory: Callable[[], Policy], extra: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    tally = counts.count(records)
    synchronised = policy_class(mode).synchronised  # barrier idle is this mode's own cost
    # Times cover what this run computed: reused items ran earlier (or elsewhere).
    timings = timings_from([r for r in records if not r.get("reused")], ordinal_of)
    span = metrics.makespan(timings, since=dispatch_started_at) if timings else 0.0
    lower = metrics.lower_bound(timings, devices)
    ideal = metrics.ideal_makespan(timings, devices, policy_factory) if len(timings) == len(ordinal_of) else None
    idle = metrics.barrier_idle(timings) if synchronised else {}
    wait = metrics.median_queue_wait(timings)
    summary: dict[str, Any] = {
        "mode": mode,
        "items": len(records),
        "ok": tally.ok,
        "failed": tally.failed,
        "invalid": tally.invalid,
        "not_run": tally.not_run,
        "reused": sum(1 for r in records if r.get("reused")),
        "devices": devices,
        "makespan_s": round(span, 4),
        "busy_s": {d: round(v, 4) for d, v in metrics.busy_by_device(timings, devices).items()},
        "barrier_idle_s": round(sum(idle.values()), 4) if synchronised else None,
        "barrier_idle_by_device_s": {d: round(v, 4) for d, v in idle.items()} if synchronised else None,
        "barrier_release_s": round(sum(metrics.barrier_release(timings)), 4) if synchronised else None,
        "lower_bound_s": round(lower, 4),
        # Under a millisecond of work (0 s tasks, an item or two) these ratios measure noise: not applicable.
        "efficiency": round(lower / span, 4) if span > DEGENERATE_S and lower > DEGENERATE_S else None,
        "ideal_s": round(ideal, 4) if ideal is not None else None,
        "overhead": round(span / ideal - 1, 4) if ideal and ideal > DEGENERATE_S else None,
        "max_skew_observed": round(metrics.max_skew(timings, len(devices)), 4),
        "median_queue_wait_s": round(wait, 4) if wait is not None else None,
    }
    summary.update(extra or {})
    return summary
