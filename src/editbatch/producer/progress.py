"""What the operator sees: the mode banner, the assignment table, the bar and per-batch lines."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

from ..scheduling import policy_class
from .progress_lines import ProgressLines


def preview(indices: list[int], shown: int = 5) -> str:
    head = ", ".join(str(i) for i in indices[:shown])
    more = len(indices) - shown
    return f"[{head}{', ... +' + str(more) + ' more' if more > 0 else ''}]"


class Progress:
    def __init__(self, mode: str, total: int, devices: list[str], *, stream: TextIO | None = None,
                 batches: int | None = None, batch_size: int | None = None):
        self.mode = mode
        self.facts = policy_class(mode)  # what the mode is: its label, whether it synchronises batches
        self.total = total
        self.devices = devices
        self.stream = stream or sys.stdout
        self.batches = batches
        self.batch_size = batch_size
        self.bar: tqdm | ProgressLines | None = None
        # batch -> [left, first start, slowest device, slowest seconds, last finish]
        self._open: dict[int, list[Any]] = {}
        self._next_batch_line = 0
        self._closed: dict[int, str] = {}

    def say(self, text: str = "") -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def banner(self, model: str, items: int, invalid: int, extra: str = "") -> None:
        self.say(f"[editbatch] Starting batch edit: {items} images on {len(self.devices)} devices ({model})")
        self.say(f"  Batch synchronization: {'ENABLED' if self.facts.synchronised else 'DISABLED'}"
                 f"  (mode: {self.mode}{extra})")
        if invalid:
            self.say(f"  {invalid} invalid item(s) recorded and skipped (see manifest.jsonl)")

    def assignment(self, per_device: dict[str, list[int]] | None, how: list[str]) -> None:
        """The seed's task-assignment table, then the mode's own lines (`how`)."""
        if per_device is None:
            self.say("Task Assignment: one shared queue, whichever device is free takes the next item")
        else:
            self.say("Task Assignment:")
            for device, indices in per_device.items():
                self.say(f"  {device}: {len(indices)} images -> {preview(indices)}")
        for line in how:
            self.say(line)

    def start(self) -> None:
        if not sys.stderr.isatty():
            self.bar = ProgressLines(self.total, f"{self.facts.label} Editing images", sys.stderr)
            return
        self.bar = tqdm(total=self.total, desc=f"{self.facts.label} Editing images", unit="img",
                        file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    def track_batch(self, batch: int | None, size: int) -> None:
        if batch is not None and batch not in self._open:
            self._open[batch] = [size, None, None, 0.0, None]

    def item_done(self, batch: int | None, device: str | None, started: float | None, finished: float | None) -> None:
        if self.bar is not None:
            self.bar.update(1)
        if batch is None or batch not in self._open:
            return
        entry = self._open[batch]
        entry[0] -= 1
        if started is not None and finished is not None:
            entry[1] = started if entry[1] is None else min(entry[1], started)
            entry[4] = finished if entry[4] is None else max(entry[4], finished)
            if finished - started >= entry[3]:
                entry[2], entry[3] = device, finished - started
        if entry[0] == 0:
            del self._open[batch]
            slowest = f"slowest: {entry[2]} {entry[3]:.2f}s" if entry[2] else "no task finished"
            took = entry[4] - entry[1] if entry[1] is not None else 0.0
            # First start to last finish, from the workers' clocks.
            self._closed[batch] = (f"Batch {batch + 1}/{self.batches} done in {took:.2f}s, "
                                   f"{'GPUs synced' if self.facts.synchronised else 'all items done'} ({slowest})")
            # Lines come out in batch order, a resume cursor the reader can trust.
            while self._next_batch_line in self._closed:
                self.say(self._closed.pop(self._next_batch_line))
                self._next_batch_line += 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
