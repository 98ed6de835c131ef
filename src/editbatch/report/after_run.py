"""The report written at the end of every run: best effort, never the reason a run fails."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def write_report_after_run(out_dir: Path, say: Callable[[str], None]) -> None:
    try:
        from .page import write_report

        result = write_report([out_dir])
        say(f"Report: {result.html} ({result.seconds:.1f}s)")
    except Exception as exc:  # noqa: BLE001 - the run's own files are already written; the report is extra
        say(f"Report not written: {exc.__class__.__name__}: {exc} (try `editbatch report {out_dir}`)")
