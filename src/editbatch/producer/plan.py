"""A run's plan: which items it has, which are still to do, and the folder it holds.

The first steps of a run, before anything is started: read and check the
items, take the output folder (refusing a folder another live run holds,
or one that holds an earlier run unless told to resume or overwrite), find
what an earlier run of the folder finished, and write the config workers
and resumes read.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import layout
from ..config import RunConfig, dump_config
from ..dataset import Item, check_items, load_dataset, where
from ..errors import ConfigError
from ..models.identity import model_identity
from ..models.registry import get_model_class
from ..output_folder import create_output_dir
from ..seeding import item_seed
from ..workers.roots import check_run_paths, with_worker_roots
from . import resume
from .folder_lock import FolderLock


@dataclass(frozen=True)
class RunOptions:
    strict: bool = False  # any invalid item is an error before anything runs
    resume: bool = False  # reuse what the output folder already holds, run the rest
    overwrite: bool = False  # delete an earlier run's files in the output folder first
    force: bool = False  # resume even if the model, seed or dataset differ
    only_failed: bool = False  # with resume: run the items that failed, not those the run never reached


@dataclass
class Plan:
    run_id: str
    out_dir: Path
    folder_id: str  # this folder's incarnation: item claims of an overwritten folder do not carry over
    items: list[Item]
    seeds: dict[int, int]
    carried: resume.Carried
    todo: list[Item]
    previous: dict[str, Any] | None  # the earlier run.json, when resuming
    resolved: Path  # config.resolved.yaml
    lock: FolderLock
    model_id: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> list[Item]:
        return [i for i in self.items if i.valid]

    @property
    def earlier_runs(self) -> list[str]:
        return [str(r) for r in (self.previous or {}).get("runs", [])]


def prepare_items(config: RunConfig, source: str, *, strict: bool) -> list[Item]:
    model_cls = get_model_class(config.model.type)
    items = load_dataset(config.dataset.path, config.dataset.format, config.dataset.limit, source=source)
    check_items(items, max_images=model_cls.max_images, max_pixels=config.dataset.max_pixels)
    check_run_paths(config, items, source)
    bad = [i for i in items if not i.valid]
    if strict and bad:
        listing = "; ".join(f"{where(i)}: {i.error}" for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise ConfigError(str(config.dataset.path), "items", f"{len(bad)} invalid item(s) with --strict: {listing}")
    return items


def make_plan(config: RunConfig, source: str, options: RunOptions, run_id: str | None = None) -> Plan:
    """Check the items and take the folder. The caller releases `plan.lock` when the run is over."""
    items = prepare_items(config, source, strict=options.strict)
    seeds = {i.index: item_seed(config.schedule.seed, i.id) for i in items}
    run_id = run_id or uuid.uuid4().hex[:12]
    out_dir = create_output_dir(config.output_dir, source)
    lock = FolderLock(out_dir)
    lock.acquire(source, run_id)
    try:
        previous = resume.check_folder(out_dir, config, source, resume=options.resume, overwrite=options.overwrite,
                                       force=options.force)
        model_id = model_identity(config.model)
        carried = resume.carry_over(out_dir, items, seeds, model_id) if options.resume else resume.Carried()
        todo = [i for i in items if i.valid and i.index not in carried.done
                and (not options.only_failed or i.index in carried.history)]
        folder_id = str((previous or {}).get("folder_id") or uuid.uuid4().hex[:16])
        resolved = out_dir / layout.CONFIG
        # Absolute paths: `editbatch resume DIR` works from any folder.
        written = config.model_copy(update={
            "output_dir": out_dir,
            "dataset": config.dataset.model_copy(update={"path": Path(config.dataset.path).resolve()})})
        if config.cluster.broker == "auto":
            # Private workers read this file: it carries their roots (the run's folder and its inputs).
            written = with_worker_roots(written, out_dir, items)
        resolved.write_text(dump_config(written, redact=True), encoding="utf-8")
    except BaseException:
        lock.release()
        raise
    return Plan(run_id, out_dir, folder_id, items, seeds, carried, todo, previous, resolved, lock, model_id)
