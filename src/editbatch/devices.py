"""Device specs as written in configs (``0``, ``cpu``, ``node-a:3``) and the queue each one owns.

Kept free of torch: the producer and the scheduling core only need names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SHARED_QUEUE = "shared"
_NODE_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Device:
    """One worker slot: a CUDA device on a node, or a CPU slot."""

    kind: str  # "cuda" or "cpu"
    index: int  # CUDA ordinal for cuda; the cpu slot number for cpu
    node: str | None = None

    @property
    def queue(self) -> str:
        base = f"gpu{self.index}" if self.kind == "cuda" else f"cpu{self.index}"
        return f"{self.node}-{base}" if self.node else base

    @property
    def spec(self) -> str:
        """The string that `editbatch worker --device` takes to bind this slot."""
        base = str(self.index) if self.kind == "cuda" else f"cpu{self.index}"
        return f"{self.node}:{base}" if self.node else base

    def __str__(self) -> str:
        return self.queue


def parse_device(text: str | int) -> Device:
    """Parse one ``--device`` value: ``3``, ``cpu0``, ``node-a:3``."""
    raw = str(text).strip()
    node = None
    if ":" in raw:
        node, raw = raw.split(":", 1)
        if not _NODE_RE.match(node):
            raise ValueError(f"bad node name {node!r} in device {text!r}")
    if raw.isdigit():
        return Device("cuda", int(raw), node)
    if raw.startswith("cpu") and (raw[3:] == "" or raw[3:].isdigit()):
        return Device("cpu", int(raw[3:] or 0), node)
    raise ValueError(f"device {text!r} is neither a CUDA index (0, 1, ...) nor cpu/cpuN")


def expand_devices(entries: list[str | int]) -> list[Device]:
    """Turn a config's ``devices`` list into distinct slots.

    A bare ``cpu`` entry gets the next free cpu slot number, so ``[cpu, cpu]``
    means two CPU workers with queues ``cpu0`` and ``cpu1``.
    """
    devices: list[Device] = []
    cpu_next: dict[str | None, int] = {}
    for entry in entries:
        raw = str(entry).strip()
        node, _, tail = raw.rpartition(":") if ":" in raw else (None, "", raw)
        if tail == "cpu":
            n = cpu_next.get(node or None, 0)
            entry = f"{node}:cpu{n}" if node else f"cpu{n}"
        device = parse_device(entry)
        if device.kind == "cpu":
            cpu_next[device.node] = max(cpu_next.get(device.node, 0), device.index + 1)
        devices.append(device)
    queues = [d.queue for d in devices]
    dupes = sorted({q for q in queues if queues.count(q) > 1})
    if dupes:
        raise ValueError(f"devices listed twice: {', '.join(dupes)}")
    return devices
