"""The run report: a static HTML page (header figures, per-device timeline, gallery) and timeline.png."""

from .page import ReportResult, write_report

__all__ = ["ReportResult", "write_report"]
