"""The run report: a static HTML page (header figures, per-device timeline, gallery) and timeline.png."""

from __future__ import annotations

__all__ = ["ReportResult", "write_report"]


def __getattr__(name: str):
    # Lazy: workers import `report.thumbnails`, which must not bring in Jinja2 and matplotlib.
    if name in __all__:
        from . import page

        return getattr(page, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
