"""The job commands of the CLI: serve, submit, jobs, status JOB, wait, cancel JOB."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ..errors import EXIT_INTERRUPTED, EXIT_ITEMS_FAILED, EXIT_OK, ConfigError, EditBatchError


def client_from_args(args):
    """A client for the broker named by --broker, EDITBATCH_BROKER, or the cluster config (--config)."""
    from ..client import Client

    broker = getattr(args, "broker", None) or os.environ.get("EDITBATCH_BROKER")
    namespace = "editbatch"
    cluster_path = getattr(args, "cluster_config", None)
    if cluster_path:
        from .serve import load_cluster_config

        cluster = load_cluster_config(cluster_path, broker=broker)
        broker, namespace = cluster.cluster.broker, cluster.cluster.namespace
    if not broker:
        raise EditBatchError("job commands need the broker: --broker URL, EDITBATCH_BROKER or --config CLUSTER.yaml")
    return Client(broker, namespace=namespace)


def job_config(path: str) -> dict[str, Any]:
    """A config file as the coordinator gets it: checked here first (same messages as `run`), paths absolute."""
    from ..config import load_config

    load_config(path)
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    data.pop("cluster", None)  # the coordinator's cluster runs every job
    if isinstance(data.get("dataset"), dict) and data["dataset"].get("path"):
        data["dataset"]["path"] = str(Path(data["dataset"]["path"]).resolve())
    if data.get("output_dir"):
        data["output_dir"] = str(Path(data["output_dir"]).resolve())
    return data


def cmd_submit(args, parser) -> int:
    from ..client import JobRefused, QueueFull

    if args.id and len(args.configs) > 1:
        parser.error("--id names one job: give one CONFIG with it")
    if args.resume and not args.id:
        parser.error("--resume finishes an existing job: name it with --id")
    configs = [job_config(path) for path in args.configs]  # all checked before any is sent
    client = client_from_args(args)
    jobs = []
    for path, config in zip(args.configs, configs):
        try:
            job = resume_job(client, args.id, config, args.priority) if args.resume else \
                client.submit(config, priority=args.priority, job_id=args.id)
        except QueueFull as exc:
            raise EditBatchError(f"{path}: not submitted: {exc}") from None
        except JobRefused as exc:
            field, _, message = str(exc).partition(": ")
            raise ConfigError(path, field, f"{message}; not submitted") from None
        if not args.resume and not job.created:
            existing(job, path)
        jobs.append(job)
        print(job.id, flush=True)
    if not args.wait:
        return EXIT_OK
    codes = [wait_job(job) for job in jobs]
    return max(codes)


def existing(job, path: str) -> None:
    """`submit --id` of a job that exists: say what it is; one that ended is not run again unless resumed."""
    from .store import FINAL

    record = job.status()
    if record["state"] in FINAL:
        raise ConfigError(path, "--id", f"job {job.id} exists and ended {record['state']}; `editbatch submit "
                                        f"--resume --id {job.id} CONFIG` (or `editbatch jobs resume {job.id}`) "
                                        "finishes it on its folder, or choose another id")
    print(f"editbatch: job {job.id} exists already ({record['state']}); not submitted again", file=sys.stderr)


def resume_job(client, job_id: str, config: dict[str, Any] | None = None, priority: int = 0):
    """Queue an ended job again on its folder; one queued or running is left as it is (said on stderr)."""
    from ..client import UnknownJob

    try:
        job = client.resume(job_id, config)
    except UnknownJob:
        if config is None:
            raise ConfigError(job_id, None, "no such job to resume") from None
        # A first submission: a `submit --resume` that is run again after a failure finds it then.
        return client.submit(config, priority=priority, job_id=job_id)
    if job.resumed_from is None:
        print(f"editbatch: job {job_id} is {job.status()['state']}; nothing to resume", file=sys.stderr)
    else:
        print(f"editbatch: job {job_id} ({job.resumed_from}) queued again; finished items are reused",
              file=sys.stderr)
    return job


def parse_age(text: str) -> float:
    """`30d`, `12h`, `45m`, `90s` (or plain seconds) as seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise ConfigError("--older-than", None, f"{text!r} is not an age such as 30d, 12h, 45m or 90s") from None


def wait_job(job) -> int:
    from ..client import JobFailed

    try:
        summary = job.wait()
    except JobFailed as exc:
        print(f"job {job.id}: {exc.state}: {exc}")
        return EXIT_INTERRUPTED if exc.state == "cancelled" else EXIT_ITEMS_FAILED
    print(f"job {job.id}: done: {summary.get('ok')} ok, {summary.get('failed')} failed, "
          f"{summary.get('invalid')} invalid")
    return EXIT_OK if not summary.get("failed") and not summary.get("invalid") else EXIT_ITEMS_FAILED


def cmd_wait(args) -> int:
    client = client_from_args(args)
    return wait_job(_job(client, args.job))


def cmd_jobs(args, parser) -> int:
    if args.action in ("resume",) and not args.job:
        parser.error("jobs resume needs a JOB id")
    if args.action == "prune" and not args.older_than:
        parser.error("jobs prune needs --older-than AGE (e.g. 30d)")
    client = client_from_args(args)
    if args.action == "resume":
        print(resume_job(client, args.job).id)
        return EXIT_OK
    if args.action == "prune":
        pruned = client.prune(parse_age(args.older_than))
        print(f"deleted {len(pruned)} ended job record(s)" + (f": {', '.join(pruned)}" if pruned else ""))
        return EXIT_OK
    print(render_jobs(client.list_jobs(args.state)))
    return EXIT_OK


def render_jobs(records: list[dict[str, Any]]) -> str:
    """A table with a header; the id column is as wide as the longest id (a UUID fits)."""
    header = ("JOB", "STATE", "PRIO", "OK", "FAILED", "INVALID", "NOT RUN", "TOTAL", "NAME", "OUTPUT")
    rows = []
    for r in records:
        counts = r.get("counts") or {}
        cells = [str(counts.get(k, 0)) if counts else "-" for k in ("ok", "failed", "invalid", "not_run")]
        rows.append((r["id"], r["state"], str(r.get("priority", 0)), *cells, str(counts.get("total", "-")),
                     (r.get("config") or {}).get("name", "-"), str(r.get("output_dir"))))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1]
                     for row in [header, *rows]).rstrip() if rows else "  ".join(header) + "\n(no jobs)"


def cmd_job_status(args) -> int:
    client = client_from_args(args)
    record = _job(client, args.run_dir).status()
    if args.json:
        print(json.dumps(record, indent=2))
        return EXIT_OK
    print(render_job(record))
    return EXIT_OK


def cmd_job_cancel(args) -> int:
    client = client_from_args(args)
    print(_job(client, args.output_dir).cancel())
    return EXIT_OK


def _job(client, job_id: str):
    from ..client import UnknownJob

    try:
        return client.job(job_id)
    except UnknownJob:
        raise ConfigError(job_id, None, "neither a folder nor a known job id") from None


def render_job(r: dict[str, Any]) -> str:
    def when(t):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"

    counts = r.get("counts") or {}
    lines = [f"job {r['id']} ({(r.get('config') or {}).get('name', '-')}): {r['state']}"
             + (f" (position {r['position']} in the queue)" if r.get("position") else ""),
             f"output: {r.get('output_dir')}",
             f"priority: {r.get('priority', 0)}"]
    if counts:
        lines.append(f"items: {counts['total'] - counts['pending']}/{counts['total']} done: {counts['ok']} ok, "
                     f"{counts['failed']} failed, {counts['invalid']} invalid"
                     + (f", {counts['not_run']} not run" if counts.get("not_run") else ""))
    lines.append(f"submitted {when(r.get('submitted_at'))}, started {when(r.get('started_at'))}, "
                 f"finished {when(r.get('finished_at'))}")
    if r.get("error"):
        lines.append(f"error: {r['error']}")
    return "\n".join(lines)
