"""`editbatch score RUN_DIR`: score a run folder, or a folder of outputs made by any tool, matched by id.

Steps: read the settings (the `evaluate:` section of --config, else of the
run's config.resolved.yaml; --preset and --set on top), read the dataset,
find each item's output, take the metrics the workers computed (or compute
them here, cached), ask the judge what it has not answered, then write
scores.jsonl (one line per item) and scores.json (per category: n, failed,
mean, bootstrap 95% interval; macro and micro means).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import layout
from ..config import EvaluateConfig, apply_override, validate_evaluate
from ..dataset import Item, load_dataset, output_name
from ..errors import ConfigError
from ..producer.outputs import read_manifest, write_json, write_jsonl
from . import stats
from .cache import ScoreCache, file_digest
from .item import ItemScorer, Texts, cached_score
from .presets import PRESETS, Preset, value_names, values_of

OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class Scored:
    items: int = 0
    scored: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    no_output: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def read_settings(run_dir: Path, config_path: str | None, preset: str | None,
                  overrides: list[str]) -> tuple[EvaluateConfig, Path | None, str]:
    """The evaluate section and the dataset path, from --config or the run folder's resolved config."""
    path = Path(config_path) if config_path else run_dir / layout.CONFIG
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(str(path), None, f"not valid YAML: {exc}") from None
    elif config_path:
        raise ConfigError(str(path), None, "config file not found")
    if not isinstance(data, dict):
        raise ConfigError(str(path), None, "top level must be a mapping of keys to values")
    for item in overrides:
        apply_override(data, item)
    section = dict(data.get("evaluate") or {})
    if preset:
        section["preset"] = preset
    evaluate = validate_evaluate(section, str(path))
    dataset = (data.get("dataset") or {}).get("path")
    return evaluate, Path(dataset) if dataset else None, str(path)


def find_outputs(folder: Path, items: list[Item]) -> dict[str, Path]:
    """Each item's output: from the run's manifest, else `<id>.<ext>` or `images/<id>.png` in the folder."""
    manifest = {r["id"]: r for r in read_manifest(folder / layout.MANIFEST) if r.get("status") == "ok"}
    found: dict[str, Path] = {}
    for item in items:
        if item.id in manifest and manifest[item.id].get("output"):
            path = folder / manifest[item.id]["output"]
        else:
            stem = output_name(item.id)[: -len(".png")]
            candidates = [folder / f"{stem}{s}" for s in OUTPUT_SUFFIXES] + [folder / layout.IMAGES / f"{stem}.png"]
            path = next((c for c in candidates if c.is_file()), None)
        if path is not None and path.is_file():
            found[item.id] = path
    return found


def category_of(item: Item, column: str) -> str:
    value = item.category if column == "category" else item.extra.get(column)
    return str(value) if value not in (None, "") else "all"


def score_run(run_dir: str | Path, *, config_path: str | None = None, preset: str | None = None,
              dataset: str | None = None, overrides: list[str] | None = None, broker: str | None = None,
              judged: dict[str, dict[str, Any]] | None = None, log=print) -> Scored:
    """`judged`: the judge's records of items already asked in this process (the run's feed): not asked again."""
    started = time.monotonic()
    folder = Path(run_dir)
    if not folder.is_dir():
        raise ConfigError(str(folder), None, "no such folder")
    evaluate, dataset_path, source = read_settings(folder, config_path, preset, list(overrides or ()))
    dataset_path = Path(dataset) if dataset else dataset_path
    if dataset_path is None:
        raise ConfigError(source, "dataset.path", "no dataset: pass --dataset FILE (outputs are matched by id)")
    items = [i for i in load_dataset(dataset_path, source=source) if i.valid]
    outputs = find_outputs(folder, items)
    the_preset = PRESETS[evaluate.preset] if evaluate.preset else None
    cache = ScoreCache(evaluate.cache_dir or folder / layout.SCORES_CACHE)
    previous = {r["id"]: r.get("scores") or {} for r in read_manifest(folder / layout.MANIFEST)}
    result = Scored(items=len(items), no_output=[i.id for i in items if i.id not in outputs])
    rows: dict[str, dict[str, Any]] = {}
    group_by = evaluate.categories_from()
    metrics = evaluate.all_metrics()
    scorer = ItemScorer.from_spec({"metrics": metrics, "clip": evaluate.clip, "dino": evaluate.dino})
    for item in items:
        if item.id not in outputs:
            continue
        scores = {"metrics": item_metrics(scorer, cache, item, outputs[item.id], previous.get(item.id) or {})}
        rows[item.id] = {"id": item.id, "category": category_of(item, group_by), "output": str(outputs[item.id]),
                         "instruction": item.instruction, "scores": scores}
    if the_preset is not None and the_preset.uses_judge:
        for item_id, record in (judged or {}).items():
            if item_id in rows:
                rows[item_id]["scores"]["judge"] = record
        todo = [i for i in items if i.id in outputs and i.id not in (judged or {})]
        if todo:
            judge_all(the_preset, evaluate, todo, outputs, rows, folder, broker, source, log)
    result.scored = len(rows)
    write_results(folder, evaluate, the_preset, metrics, rows, result)
    result.seconds = time.monotonic() - started
    return result


def item_metrics(scorer: ItemScorer, cache: ScoreCache, item: Item, output: Path,
                 previous: dict[str, Any]) -> dict[str, float]:
    """The workers' metrics when they cover what is asked, else computed here (cached)."""
    if not scorer.metrics:
        return {}
    known = previous.get("metrics") or {}
    if set(scorer.metrics) <= set(known) | set(previous.get("missing") or ()):
        return {k: known[k] for k in scorer.metrics if k in known}
    from ..config import DEFAULT_MAX_PIXELS
    from ..imageio import load_rgb

    texts = Texts(item.instruction, **{k: str(item.extra[k]) for k in ("input_caption", "output_caption")
                                       if item.extra.get(k)})
    image = load_rgb(output, DEFAULT_MAX_PIXELS)
    inputs = [load_rgb(p, DEFAULT_MAX_PIXELS) for p in item.images]
    target = load_rgb(item.target, DEFAULT_MAX_PIXELS) if item.target else None
    scores = cached_score(scorer, cache, image, inputs, [file_digest(p) for p in item.images], target,
                          file_digest(item.target), texts)
    return scores["metrics"]


def judge_all(preset: Preset, evaluate: EvaluateConfig, items: list[Item], outputs: dict[str, Path],
              rows: dict[str, dict[str, Any]], folder: Path, broker: str | None, source: str, log) -> None:
    """One `editbatch.judge` task per item to the judge workers (see judge/workers.py); their records into rows."""
    import uuid

    from .. import runstate
    from ..celery_app import make_app
    from ..redisconn import connect
    from .judge.dispatch import JudgeDispatch
    from .judge.feed import job_of
    from .judge.setup import answer_deadline_s, make_stage
    from .judge.workers import NAMESPACE, judge_workers, serving

    cfg = evaluate.judge
    queue = make_stage(evaluate, source).queue
    cache_dir = Path(evaluate.cache_dir or folder / layout.SCORES_CACHE)
    jobs = [job_of(i, outputs[i.id]) for i in items if i.id in outputs]
    reads = [p for i in items for p in [*i.images, *([i.target] if i.target else [])]]
    with judge_workers(broker, evaluate, queue, folder, reads, cache_dir, log) as url:
        redis = connect(url)
        if not serving(redis, NAMESPACE, queue):
            log(f"[editbatch] No judge worker serves {queue} yet: the items wait in its queue until one does "
                f"(editbatch judge-worker --config CONFIG, with this evaluate section)")
        run_id = f"score-{uuid.uuid4().hex[:12]}"
        runstate.mark_running(redis, NAMESPACE, run_id)
        dispatch = JudgeDispatch(make_app(url, task_events=False), redis, NAMESPACE, run_id, queue, cache_dir,
                                 deadline_s=answer_deadline_s(cfg), say=log)
        state = runstate.CANCELLED
        try:
            log(f"[editbatch] Judging {len(jobs)} items with {cfg.model} on queue {queue} "
                f"({cfg.requests_per_minute:g} requests/min shared by every judge worker)")
            for job in jobs:
                dispatch.submit(job)
            dispatch.wait()
            state = runstate.ENDED
        finally:
            dispatch.stop()
            runstate.mark_over(redis, NAMESPACE, run_id, state)  # copies still queued are skipped
            redis.close()
    for item_id, record in dispatch.done.items():
        rows[item_id]["scores"]["judge"] = record


def write_results(folder: Path, evaluate: EvaluateConfig, preset: Preset | None, metrics: list[str],
                  rows: dict[str, dict[str, Any]], result: Scored) -> None:
    names = value_names(preset, metrics)
    table = []
    for row in rows.values():
        values, failed = values_of(preset, row["scores"])
        row["values"] = values
        table.append({"category": row["category"], "values": values, "failed": failed})
        if failed:
            judge = row["scores"].get("judge") or {}
            result.failed.append({"id": row["id"], "status": judge.get("status", "not judged"),
                                  "error": judge.get("error")})
    write_jsonl(folder / layout.SCORES_ITEMS, list(rows.values()))
    counts: dict[str, int] = {}
    for f in result.failed:
        counts[f["status"]] = counts.get(f["status"], 0) + 1
    summary = {
        "preset": preset.name if preset else None, "reproduces": preset.reproduces if preset else None,
        "headline": preset.headline if preset else None, "average": preset.average if preset else "micro",
        "group_by": evaluate.categories_from(), "items": result.items, "scored": result.scored,
        "no_output": result.no_output, "failed": counts, "failed_items": result.failed,
        "metrics": metrics, "clip": evaluate.clip, "dino": evaluate.dino,
        "judge": judge_identity(evaluate, preset),
        "note": "micro: mean over items; macro: mean of the category means; ci95: bootstrap percentile interval "
                f"({evaluate.bootstrap} resamples); failed items are counted, never scored",
        "scores": stats.aggregate(table, names, samples=evaluate.bootstrap),
    }
    result.summary = summary
    write_json(folder / layout.SCORES, summary)


def judge_identity(evaluate: EvaluateConfig, preset: Preset | None) -> dict[str, Any] | None:
    if preset is None or not preset.uses_judge or evaluate.judge is None:
        return None
    import hashlib

    from .judge.stage import default_template

    template = Path(evaluate.judge.template or default_template(preset))
    return {"model": evaluate.judge.model, "url": evaluate.judge.url, "template": str(template),
            "template_sha256": hashlib.sha256(template.read_bytes()).hexdigest(),
            "temperature": evaluate.judge.temperature, "seed": evaluate.judge.seed,
            "max_tokens": evaluate.judge.max_tokens}


def render(result: Scored) -> str:
    summary = result.summary
    lines = [f"Scored {result.scored} of {result.items} items in {result.seconds:.1f}s"
             + (f" ({len(result.no_output)} without an output)" if result.no_output else "")]
    headline = summary.get("headline")
    for name, agg in summary["scores"].items():
        if headline and name != headline and not name.startswith(("SC", "PQ")) and name not in (summary["metrics"]):
            continue
        micro, macro = agg["micro"], agg["macro"]
        lines.append(f"  {name}: micro {_fmt(micro['mean'], micro['ci95'])}, macro {_fmt(macro['mean'], macro['ci95'])}"
                     f" over {macro['categories']} categories (n={micro['n']}, failed={micro['failed']})")
    if result.failed:
        lines.append(f"  not scored by the judge: {json.dumps(summary['failed'])}: "
                     + ", ".join(f"{f['id']} ({f['status']})" for f in result.failed[:10])
                     + (" ..." if len(result.failed) > 10 else ""))
    return "\n".join(lines)


def _fmt(mean: float | None, ci: list[float] | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")
