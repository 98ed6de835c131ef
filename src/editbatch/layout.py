"""The files of a run's output folder: their names, in one place.

Everything that reads or writes a run folder (the producer, workers,
resume, status, cancel, the report, the coordinator) names its files
through this module, so a file is never called two things.
"""

from __future__ import annotations

from pathlib import Path

RUN = "run.json"  # identity and state of the folder's latest run
MANIFEST = "manifest.jsonl"  # one line per item
SUMMARY = "summary.json"
WORKERS = "workers.json"
CONFIG = "config.resolved.yaml"
REPORT = "report.html"
TIMELINE = "timeline.png"
IMAGES = "images"  # outputs, images/<safe id>.png
RECORDS = "records"  # the ledger: records/<safe id>.json, written by the worker that computed the item
REPORT_DIR = "report"  # thumbnails
LOGS = "logs"
ATTEMPTS = ".attempts"  # each attempt's files before one of them is committed (see tasks/commit.py)
SCORES = "scores.json"  # per-category means with intervals (editbatch score)
SCORES_ITEMS = "scores.jsonl"  # one line per item: its metrics and the judge's answer
SCORES_PNG = "scores.png"  # the report's chart of the scores per category
SCORES_CACHE = ".scores-cache"  # default score cache (see scores/cache.py)
LOCK = ".editbatch.lock"  # held by the run that owns the folder (see producer/folder_lock.py)

# What a run writes; --overwrite removes these and nothing else.
RUN_FILES = (RUN, MANIFEST, SUMMARY, WORKERS, REPORT, TIMELINE, SCORES, SCORES_ITEMS, SCORES_PNG)
RUN_FOLDERS = (IMAGES, RECORDS, REPORT_DIR, ATTEMPTS)


def holds_a_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in (RUN, MANIFEST, RECORDS))
