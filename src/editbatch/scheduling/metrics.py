"""What a run cost: bounds, efficiency, barrier idle time, skew, ideal makespan.

All inputs are plain `Timing` records taken from the manifest, so the same
numbers can be recomputed from a finished run's files.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable

from .policies import Policy
from .replay import replay


# Below this much work per task (0 s simulated edits, a model of a millisecond) a run's time is per-task
# dispatch cost, not scheduling: efficiency would read 0.000 and overhead +30000%, numbers that mislead.
MIN_TASK_WORK_S = 5e-3


@dataclass(frozen=True, slots=True)  # slots: a 100,000-item summary holds one per item
class Timing:
    ordinal: int  # position among the items that were run, in input order
    device: str  # queue of the device that ran it
    started_at: float
    finished_at: float
    batch: int | None = None
    submitted_at: float | None = None
    # Device-independent amount of work in seconds, where the model knows it
    # (the simulated model does); otherwise the measured duration is used.
    work_s: float | None = None

    @property
    def duration(self) -> float:
        return max(0.0, self.finished_at - self.started_at)

    @property
    def work(self) -> float:
        return self.work_s if self.work_s is not None else self.duration


def busy_by_device(timings: Iterable[Timing], devices: list[str]) -> dict[str, float]:
    busy = {d: 0.0 for d in devices}
    for t in timings:
        busy[t.device] = busy.get(t.device, 0.0) + t.duration
    return busy


def device_rates(timings: list[Timing], devices: list[str]) -> dict[str, float]:
    """Work done per second of busy time on each device (1.0 where work is unknown)."""
    work: dict[str, float] = defaultdict(float)
    busy: dict[str, float] = defaultdict(float)
    for t in timings:
        work[t.device] += t.work
        busy[t.device] += t.duration
    return {d: (work[d] / busy[d]) if busy[d] > 0 and work[d] > 0 else 1.0 for d in devices}


def lower_bound(timings: list[Timing], devices: list[str]) -> float:
    """No schedule can finish faster: total work over the devices' combined rate, or the longest task."""
    if not timings:
        return 0.0
    rates = device_rates(timings, devices)
    total_rate = sum(rates.values()) or float(len(devices))
    return max(sum(t.work for t in timings) / total_rate, max(t.duration for t in timings))


def makespan(timings: list[Timing], since: float | None = None) -> float:
    if not timings:
        return 0.0
    start = since if since is not None else min(t.started_at for t in timings)
    return max(t.finished_at for t in timings) - start


def barrier_idle(timings: list[Timing]) -> dict[str, float]:
    """Device time spent waiting for the slowest task of its batch (batched runs only)."""
    by_batch: dict[int, list[Timing]] = defaultdict(list)
    for t in timings:
        if t.batch is not None:
            by_batch[t.batch].append(t)
    idle: dict[str, float] = defaultdict(float)
    for members in by_batch.values():
        end = max(t.finished_at for t in members)
        for t in members:
            idle[t.device] += end - t.finished_at
    return dict(idle)


def barrier_release(timings: list[Timing]) -> list[float]:
    """Per batch boundary: from the last finish of batch k to the first start of batch k+1.

    The time the sync point itself costs, on top of waiting for the slowest task.
    """
    ends: dict[int, float] = {}
    starts: dict[int, float] = {}
    for t in timings:
        if t.batch is not None:
            ends[t.batch] = max(ends.get(t.batch, t.finished_at), t.finished_at)
            starts[t.batch] = min(starts.get(t.batch, t.started_at), t.started_at)
    return [max(0.0, starts[k + 1] - ends[k]) for k in sorted(ends) if k + 1 in starts]


def max_skew(timings: list[Timing], devices: int) -> float:
    """Largest span, in batches of `devices` items, from the oldest unfinished item to a newly started one.

    At each task start the oldest unfinished item is the first ordinal whose
    finish lies after that instant; it only moves forward in time, so one
    pass over the starts in time order is enough.
    """
    if not timings or devices <= 0:
        return 0.0
    by_ordinal = sorted(timings, key=lambda t: t.ordinal)
    ordinals = [t.ordinal for t in by_ordinal]
    finishes = [t.finished_at for t in by_ordinal]
    pointer = 0
    worst = 0
    for t in sorted(timings, key=lambda t: (t.started_at, t.ordinal)):
        while pointer < len(finishes) and finishes[pointer] <= t.started_at:
            pointer += 1
        oldest = ordinals[pointer] if pointer < len(ordinals) else t.ordinal
        worst = max(worst, t.ordinal - oldest)
    return worst / devices


def ideal_makespan(timings: list[Timing], devices: list[str], policy_factory: Callable[[], Policy]) -> float:
    """Replay the run's policy with the recorded durations and no orchestration cost.

    An item keeps its measured duration on the device that ran it; on another
    device its work is scaled by that device's measured rate.
    """
    if not timings:
        return 0.0
    rates = device_rates(timings, devices)
    by_ordinal = {t.ordinal: t for t in timings}

    def duration(ordinal: int, device: str) -> float:
        t = by_ordinal.get(ordinal)
        if t is None:
            return 0.0
        if device == t.device:
            return t.duration
        return t.work / rates.get(device, 1.0)

    return replay(policy_factory(), devices, duration)


def median_queue_wait(timings: Iterable[Timing]) -> float | None:
    waits = [t.started_at - t.submitted_at for t in timings if t.submitted_at is not None]
    return statistics.median(waits) if waits else None


@dataclass(frozen=True)
class Ratios:
    """Efficiency (lower bound / makespan) and overhead (makespan / ideal - 1), or why they do not apply."""

    efficiency: float | None
    overhead: float | None
    not_applicable: str | None = None  # the reason both are None

    @classmethod
    def of(cls, summary: dict) -> Ratios:
        """As summary.json holds them."""
        return cls(summary.get("efficiency"), summary.get("overhead"), summary.get("not_applicable"))

    def shown(self, name: str, value_text: str | None) -> str:
        """One figure as the report and status show it: its text, or `n/a (why)`."""
        value = self.efficiency if name == "efficiency" else self.overhead
        if value is not None and value_text is not None:
            return value_text
        return f"n/a ({self.not_applicable})" if self.not_applicable else "n/a"

    def text(self) -> str:
        """`efficiency 0.962, overhead +3.1%`, or `efficiency and overhead n/a (why)`: the run's log line."""
        if self.not_applicable:
            return f"efficiency and overhead n/a ({self.not_applicable})"
        parts = [f"efficiency {self.efficiency:.3f}" if self.efficiency is not None else "efficiency n/a"]
        if self.overhead is not None:
            parts.append(f"overhead {self.overhead * 100:+.1f}%")
        return ", ".join(parts)


def ratios(timings: list[Timing], span: float, lower: float, ideal: float | None) -> Ratios:
    """The one place that decides whether efficiency and overhead mean anything for a run."""
    if not timings or span <= 0:
        return Ratios(None, None, "no item ran on a device")
    mean = sum(t.work for t in timings) / len(timings)
    if mean < MIN_TASK_WORK_S:
        return Ratios(None, None, f"{mean * 1e3:.2f} ms of work per task, under {MIN_TASK_WORK_S * 1e3:g} ms: "
                                  f"the time is per-task dispatch cost, not the schedule's")
    return Ratios(lower / span if lower > 0 else None, span / ideal - 1 if ideal else None)
