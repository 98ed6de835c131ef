"""The job commands of the CLI: serve, submit, jobs, status JOB, wait, cancel JOB."""

from __future__ import annotations

import json
import os
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
    from ..client import QueueFull

    if args.id and len(args.configs) > 1:
        parser.error("--id names one job: give one CONFIG with it")
    configs = [job_config(path) for path in args.configs]  # all checked before any is sent
    client = client_from_args(args)
    jobs = []
    for path, config in zip(args.configs, configs):
        try:
            jobs.append(client.submit(config, priority=args.priority, job_id=args.id))
        except QueueFull as exc:
            raise EditBatchError(f"{path}: not submitted: {exc}") from None
        print(jobs[-1].id, flush=True)
    if not args.wait:
        return EXIT_OK
    codes = [wait_job(job) for job in jobs]
    return max(codes)


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


def cmd_jobs(args) -> int:
    client = client_from_args(args)
    for record in client.list_jobs(args.state):
        counts = record.get("counts") or {}
        done = f"{counts.get('ok', 0)}/{counts.get('total', '?')} ok" if counts else "-"
        name = (record.get("config") or {}).get("name", "-")
        print(f"{record['id']}  {record['state']:<9}  priority {record.get('priority', 0):<3}  {done:<12}  "
              f"{name}  {record.get('output_dir')}")
    return EXIT_OK


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
