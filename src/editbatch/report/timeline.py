"""The per-device timeline of a run: one lane per worker, one bar per item.

`build_timeline` turns a run folder into plain lanes and bars (seconds from
the run's first event); the HTML page draws them as inline SVG and
`write_timeline_png` as a PNG for papers and chat. A lane with more items
than MAX_ITEM_BARS draws one bar per slice of time instead (a 100,000-item
SVG would not open, and its bars would be narrower than a pixel anyway).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from sys import intern  # one string per device, status and run, not one per item
from typing import NamedTuple

from ..humanize import duration
from ..scheduling import MODES, policy_class
from .run_folder import RunFolder

# Alternating batch colours, the colour of un-batched modes, failures and loads.
BATCH_COLOURS = ("#4c78a8", "#72b7b2")
PLAIN_COLOUR = "#4c78a8"
FAILED_COLOUR = "#e45756"
LOAD_COLOUR = "#bab0ac"
IDLE_COLOUR = "#f2cf5b"


@dataclass
class Bar:
    start: float
    end: float
    kind: str  # item, load or idle
    colour: str
    label: str
    index: int | None = None  # the item's index, for links to the gallery
    failed: bool = False


@dataclass
class Lane:
    device: str
    bars: list[Bar] = field(default_factory=list)


@dataclass
class Break:
    at: float  # seconds on the drawn axis
    label: str


@dataclass
class Timeline:
    lanes: list[Lane]
    origin: float  # epoch seconds of time 0
    span: float  # seconds drawn, from time 0 to the last event (pauses between runs drawn short)
    idle_s: float  # barrier idle drawn (sync mode)
    breaks: list[Break] = field(default_factory=list)  # where one run of the folder ends and the next begins


MAX_ITEM_BARS = 200  # per lane; above it items are drawn per slice of span / MAX_ITEM_BARS (~4 px)


class _Ran(NamedTuple):
    """What the timeline needs of an item that ran: kept per item instead of the whole record."""

    started_at: float
    finished_at: float
    device: str
    ok: bool
    batch: int | None
    index: int | None
    id: str
    status: str
    run: str | None
    round: int
    error: str | None


def _ran(records) -> list[_Ran]:
    return [_Ran(r["started_at"], r["finished_at"], intern(r["device"]), r.get("status") == "ok", r.get("batch"),
                 r.get("index"), r["id"], intern(r.get("status") or "unknown"), r.get("run") and intern(r["run"]),
                 r.get("round") or 0, None if r.get("status") == "ok" else r.get("error"))
            for r in records if r.get("device") and r.get("started_at") is not None
            and r.get("finished_at") is not None]


BREAK_SHARE = 0.04  # the width a pause between two runs of a folder is drawn with, as a share of the work drawn


@dataclass
class _Segment:
    """The stretch of time one run of the folder covered (its first start to its last finish)."""

    run_id: str | None
    start: float
    end: float
    shift: float = 0.0  # added to its times to place it on the drawn axis


def _segments(ran: list[_Ran], loads: list[dict], latest: str | None, since: float | None) -> list[_Segment]:
    """One segment per run of the folder, in time order; runs that overlap in time share one.

    The model loads (workers.json) and the dispatch start belong to the folder's latest run; a load from
    before an earlier run ended (warm workers that served that run too) is not part of it.
    """
    spans: dict[str | None, list[float]] = {}
    for r in ran:
        spans.setdefault(r.run, []).extend((r.started_at, r.finished_at))
    own = spans.get(latest) or []
    before = [t for run, times in spans.items() if run != latest and times and (not own or min(times) < min(own))
              for t in times]
    floor = max(before) if before else float("-inf")
    extra = [t for w in loads for t in (w["load_started_at"], w["load_finished_at"])] + ([since] if since else [])
    if any(t >= floor for t in extra):
        spans.setdefault(latest, []).extend(t for t in extra if t >= floor)
    found = sorted((_Segment(run, min(t), max(t)) for run, t in spans.items() if t), key=lambda g: g.start)
    merged: list[_Segment] = []
    for seg in found:
        if merged and seg.start <= merged[-1].end:
            merged[-1].end = max(merged[-1].end, seg.end)
        else:
            merged.append(seg)
    return merged


def build_timeline(run: RunFolder) -> Timeline:
    lanes = {d: Lane(d) for d in run.devices}
    ran = _ran(run.records())
    loads = [w for w in run.workers if w.get("load_started_at") and w.get("load_finished_at")]
    segments = _segments(ran, loads, run.run.get("run_id"), run.summary.get("started_at"))
    origin = segments[0].start if segments else 0.0
    work = sum(g.end - g.start for g in segments)
    breaks, pos = [], 0.0
    for k, seg in enumerate(segments):
        if k:
            # The pause between two runs (a resume the next morning) is drawn as a short marked break.
            gap = max(BREAK_SHARE * work, 1e-3)
            breaks.append(Break(pos + gap / 2, f"paused {duration(seg.start - segments[k - 1].end)}, then "
                                               f"run {seg.run_id or '?'}"))
            pos += gap
        seg.shift = pos - seg.start
        pos += seg.end - seg.start
    span = pos

    def at(t: float) -> float:
        for seg in segments:
            if t <= seg.end:
                return t + seg.shift
        return t + (segments[-1].shift if segments else -origin)

    first_at = segments[0].start if segments else 0.0
    for w in loads:
        if w["load_started_at"] < first_at:
            continue  # before every run drawn here: a warm cluster's load (see _segments)
        lane = lanes.setdefault(w.get("queue") or w.get("device"), Lane(w.get("queue") or w.get("device")))
        lane.bars.append(Bar(at(w["load_started_at"]), at(w["load_finished_at"]), "load", LOAD_COLOUR,
                             f"{lane.device}: model load {w['load_finished_at'] - w['load_started_at']:.2f}s"))
    facts = policy_class(run.mode) if run.mode in MODES else None
    batched = bool(facts and facts.batched)
    per_lane: dict[str, list[_Ran]] = {}
    for r in ran:
        per_lane.setdefault(r.device, []).append(r)
    idle_spans: dict[str, list[tuple[float, float, int]]] = {}  # device -> (finished, batch's last finish, batch)
    idle = 0.0
    if facts is not None and facts.synchronised:
        # A device that finished its batch item early waits for the batch's slowest one. Batches are numbered
        # per run and per round: the same number in a resume or a retry round is another batch.
        by_batch: dict[tuple, list[_Ran]] = {}
        for r in ran:
            if r.batch is not None:
                by_batch.setdefault((r.run, r.round, r.batch), []).append(r)
        for (_, _, batch), members in by_batch.items():
            last = max(r.finished_at for r in members)
            for r in members:
                if last - r.finished_at > 0:
                    idle += last - r.finished_at
                    idle_spans.setdefault(r.device, []).append((r.finished_at, last, batch))
    for device, items in per_lane.items():
        lane = lanes.setdefault(device, Lane(device))
        if len(items) <= MAX_ITEM_BARS:
            lane.bars += [_item_bar(r, at, batched) for r in items]
            lane.bars += [Bar(at(a), at(b), "idle", IDLE_COLOUR, f"{device}: barrier idle {b - a:.2f}s, batch {k + 1}")
                          for a, b, k in idle_spans.get(device, [])]
        else:
            lane.bars += _sliced(device, items, idle_spans.get(device, []), at, span / MAX_ITEM_BARS)
    for lane in lanes.values():
        lane.bars.sort(key=lambda b: (b.start, b.kind != "idle"))
    return Timeline(list(lanes.values()), origin, span, idle, breaks)


def _item_bar(r: _Ran, at, batched: bool) -> Bar:
    colour = FAILED_COLOUR if not r.ok else (BATCH_COLOURS[r.batch % 2] if batched and r.batch is not None
                                             else PLAIN_COLOUR)
    label = (f"{r.id} on {r.device}: {r.status} in {r.finished_at - r.started_at:.2f}s"
             + (f", batch {r.batch + 1}" if r.batch is not None else "")
             + (f" ({r.error})" if not r.ok and r.error else ""))
    return Bar(at(r.started_at), at(r.finished_at), "item", colour, label, r.index, not r.ok)


def _sliced(device: str, items: list[_Ran], idle: list[tuple[float, float, int]], at, width: float) -> list[Bar]:
    """One bar per slice of `width` drawn seconds holding items (and one for their barrier idle)."""
    slices: dict[int, list] = {}  # slice -> [start, end, items, failed, first index]
    for r in sorted(items, key=lambda r: r.started_at):
        a, b = at(r.started_at), at(r.finished_at)
        s = slices.setdefault(int(a / width) if width > 0 else 0, [a, b, 0, 0, r.index])
        s[0], s[1], s[2], s[3] = min(s[0], a), max(s[1], b), s[2] + 1, s[3] + (not r.ok)
    bars = [Bar(a, b, "item", FAILED_COLOUR if failed else PLAIN_COLOUR,
                f"{device}: {n} item{'s' if n != 1 else ''}{f', {failed} failed' if failed else ''} "
                f"from {a:.2f}s to {b:.2f}s",
                first, bool(failed)) for a, b, n, failed, first in slices.values()]
    waits: dict[int, list[float]] = {}  # slice -> [start, end, seconds idle]
    for a0, b0, _ in idle:
        a, b = at(a0), at(b0)
        w = waits.setdefault(int(a / width) if width > 0 else 0, [a, b, 0.0])
        w[0], w[1], w[2] = min(w[0], a), max(w[1], b), w[2] + (b0 - a0)
    bars += [Bar(a, b, "idle", IDLE_COLOUR, f"{device}: barrier idle {total:.2f}s from {a:.2f}s to {b:.2f}s")
             for a, b, total in waits.values()]
    return bars


def svg_geometry(timeline: Timeline, width: int = 1000, lane_height: int = 22, label_width: int = 80,
                 span: float | None = None) -> dict:
    """Pixel positions for the template: bars scaled into `width`, one row per lane, axis ticks.

    `span`: the seconds the width stands for (runs compared side by side share one scale).
    """
    span = max(span or 0.0, timeline.span)
    scale = (width - label_width - 10) / span if span > 0 else 1.0
    rows = []
    for k, lane in enumerate(timeline.lanes):
        y = 20 + k * (lane_height + 6)
        bars = [{"x": round(label_width + b.start * scale, 2), "w": round(max((b.end - b.start) * scale, 0.8), 2),
                 "y": y + (lane_height // 3 if b.kind == "idle" else 0),
                 "h": lane_height // 3 if b.kind == "idle" else lane_height, "bar": b} for b in lane.bars]
        rows.append({"device": lane.device, "y": y, "bars": bars})
    step = _tick_step(span)
    ticks = []
    t = 0.0
    while t <= span + 1e-9 and step > 0:
        ticks.append({"x": round(label_width + t * scale, 2), "label": f"{t:g}s"})
        t = round(t + step, 6)
    height = 20 + len(timeline.lanes) * (lane_height + 6) + 20
    breaks = [{"x": round(label_width + b.at * scale, 2), "label": b.label} for b in timeline.breaks]
    return {"width": width, "height": height, "rows": rows, "ticks": ticks, "lane_height": lane_height,
            "label_width": label_width, "breaks": breaks}


def _tick_step(span: float) -> float:
    """A round step giving roughly 5 to 10 ticks over `span`."""
    if span <= 0:
        return 0.0
    step = 10 ** int(f"{span:e}".split("e")[1])
    for factor in (0.1, 0.2, 0.5, 1.0):
        if span / (step * factor) <= 10:
            return step * factor
    return step


def write_timeline_png(timeline: Timeline, path: Path, title: str = "") -> None:
    """The same timeline as a PNG; the lane names go into the file's Description metadata."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch

    n = len(timeline.lanes)
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.45 * n), dpi=100)
    try:
        for k, lane in enumerate(timeline.lanes):
            y = n - 1 - k  # first device on top, as in the page
            for kind, height in (("load", 0.7), ("item", 0.7), ("idle", 0.25)):
                bars = [b for b in lane.bars if b.kind == kind]
                if bars:
                    ax.broken_barh([(b.start, b.end - b.start) for b in bars], (y - height / 2, height),
                                   facecolors=[b.colour for b in bars], edgecolor="white", linewidth=0.3)
        ax.set_yticks(range(n), [lane.device for lane in reversed(timeline.lanes)])
        ax.set_ylim(-0.6, n - 0.4)
        ax.set_xlim(0, timeline.span * 1.01 if timeline.span else 1)
        for b in timeline.breaks:
            ax.axvline(b.at, color="#666", linestyle=(0, (2, 2)), linewidth=1)
            ax.text(b.at, n - 0.45, " " + b.label, fontsize=7, color="#444", va="bottom")
        ax.set_xlabel("seconds of work from the start of the run (first model load); dashed: a pause between runs"
                      if timeline.breaks else "seconds from the start of the run (first model load)")
        if title:
            ax.set_title(title, fontsize=10, loc="left")
        # Above the plot, right of the title: nothing to collide with at any lane count.
        ax.legend(handles=[Patch(color=LOAD_COLOUR, label="model load"), Patch(color=BATCH_COLOURS[0], label="item"),
                           Patch(color=FAILED_COLOUR, label="failed"), Patch(color=IDLE_COLOUR, label="barrier idle")],
                  loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=4, fontsize=8, frameon=False)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, metadata={"Description": "lanes: " + ", ".join(lane.device for lane in timeline.lanes)})
    finally:
        plt.close(fig)
