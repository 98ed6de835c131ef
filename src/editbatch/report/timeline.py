"""The per-device timeline of a run: one lane per worker, one bar per item.

`build_timeline` turns a run folder into plain lanes and bars (seconds from
the run's first event); the HTML page draws them as inline SVG and
`write_timeline_png` as a PNG for papers and chat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
class Timeline:
    lanes: list[Lane]
    origin: float  # epoch seconds of time 0
    span: float  # seconds from time 0 to the last event
    idle_s: float  # barrier idle drawn (sync and window modes)


def build_timeline(run: RunFolder) -> Timeline:
    lanes = {d: Lane(d) for d in run.devices}
    ran = [r for r in run.manifest if r.get("device") and r.get("started_at") is not None
           and r.get("finished_at") is not None]
    loads = [w for w in run.workers if w.get("load_started_at") and w.get("load_finished_at")]
    starts = [r["started_at"] for r in ran] + [w["load_started_at"] for w in loads]
    if run.summary.get("started_at"):
        starts.append(run.summary["started_at"])
    origin = min(starts) if starts else 0.0
    ends = [r["finished_at"] for r in ran] + [w["load_finished_at"] for w in loads]
    span = max(ends) - origin if ends else 0.0

    for w in loads:
        lane = lanes.setdefault(w.get("queue") or w.get("device"), Lane(w.get("queue") or w.get("device")))
        lane.bars.append(Bar(w["load_started_at"] - origin, w["load_finished_at"] - origin, "load", LOAD_COLOUR,
                             f"{lane.device}: model load {w['load_finished_at'] - w['load_started_at']:.2f}s"))
    facts = policy_class(run.mode) if run.mode in MODES else None
    batched = bool(facts and facts.batched)
    for r in ran:
        failed = r.get("status") != "ok"
        batch = r.get("batch")
        colour = FAILED_COLOUR if failed else (BATCH_COLOURS[batch % 2] if batched and batch is not None
                                               else PLAIN_COLOUR)
        label = (f"{r['id']} on {r['device']}: {r['status']} in {r['finished_at'] - r['started_at']:.2f}s"
                 + (f", batch {batch + 1}" if batch is not None else "")
                 + (f" ({r.get('error')})" if failed and r.get("error") else ""))
        lanes.setdefault(r["device"], Lane(r["device"])).bars.append(
            Bar(r["started_at"] - origin, r["finished_at"] - origin, "item", colour, label, r.get("index"), failed))

    idle = 0.0
    if facts is not None and facts.synchronised:
        # A device that finished its batch item early waits for the batch's slowest one.
        by_batch: dict[int, list[dict]] = {}
        for r in ran:
            if r.get("batch") is not None:
                by_batch.setdefault(r["batch"], []).append(r)
        for batch, members in by_batch.items():
            last = max(r["finished_at"] for r in members)
            for r in members:
                if last - r["finished_at"] > 0:
                    idle += last - r["finished_at"]
                    lanes[r["device"]].bars.append(Bar(
                        r["finished_at"] - origin, last - origin, "idle", IDLE_COLOUR,
                        f"{r['device']}: barrier idle {last - r['finished_at']:.2f}s, batch {batch + 1}"))
    for lane in lanes.values():
        lane.bars.sort(key=lambda b: (b.start, b.kind != "idle"))
    return Timeline(list(lanes.values()), origin, span, idle)


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
    return {"width": width, "height": height, "rows": rows, "ticks": ticks, "lane_height": lane_height,
            "label_width": label_width}


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
        ax.set_xlabel("seconds from the start of the run (first model load)")
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
