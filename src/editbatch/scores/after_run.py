"""Scores written at the end of a run whose config has `evaluate:`: the workers' metrics aggregated, and the
judge asked for what it has not answered (cached answers are reused, so a resume asks nothing twice)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def write_scores_after_run(out_dir: Path, say: Callable[[str], None], judged: dict | None = None) -> None:
    from ..errors import EditBatchError
    from .command import render, score_run

    try:
        say(render(score_run(out_dir, judged=judged, log=say)))
    except EditBatchError as exc:
        say(f"Scores not written: {exc}")
    except Exception as exc:  # noqa: BLE001 - the run's own files are written; scores can be redone alone
        say(f"Scores not written: {exc.__class__.__name__}: {exc} (try `editbatch score {out_dir}`)")
