"""Durations as people read them in logs, status lines and reports."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """`7s`, `3m05s`, `2h13m07s`."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"
