"""The `editbatch` command: run, worker, judge-worker, validate, make-tiny, report, status, and jobs (serve, submit...).

Exit codes: 0 every item ok; 1 some items failed or were invalid; 2 a
config, usage or cluster error (one line on stderr naming file and field);
130 interrupted.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from . import layout
from .errors import EXIT_USAGE, ConfigError, EditBatchError


def _add_config(p: argparse.ArgumentParser, *, required_flag: bool = False) -> None:
    if not required_flag:
        p.add_argument("config", nargs="?", help="run config (YAML)")
    p.add_argument("--config", dest="config_flag", metavar="CONFIG", help="run config (YAML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set schedule.mode=nosync (repeatable)")


def _config_path(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    path = getattr(args, "config_flag", None) or getattr(args, "config", None) or os.environ.get("EDITBATCH_CONFIG")
    if not path:
        parser.error("a config file is needed (CONFIG or --config CONFIG)")
    return path


def _add_folder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true",
                   help="the output folder holds this run already: reuse every item done, run the rest")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier run's files in the output folder")
    p.add_argument("--force", action="store_true", help="with --resume: even if the model, seed or dataset changed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="editbatch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a config: start or reach the workers, edit every item, write the outputs")
    _add_config(run)
    run.add_argument("--strict", action="store_true", help="any invalid dataset item is an error before anything runs")
    _add_folder_options(run)

    resume = sub.add_parser("resume", help="finish a run in OUTPUT_DIR: reuse every item done, run the rest")
    resume.add_argument("output_dir")
    resume.add_argument("--broker", default=None, help="redis URL, for runs on an external broker "
                                                      "(default: EDITBATCH_BROKER; the folder never stores it)")
    resume.add_argument("--force", action="store_true", help="resume even if the model, seed or dataset changed")

    retry = sub.add_parser("retry", help="run only the failed items of the finished run in OUTPUT_DIR")
    retry.add_argument("output_dir")
    retry.add_argument("--broker", default=None, help="redis URL, for runs on an external broker")

    cancel = sub.add_parser("cancel", help="cancel a job, or the run writing to OUTPUT_DIR; finished items are kept")
    cancel.add_argument("output_dir", metavar="JOB_OR_DIR", help="a job id, or a run's output folder")
    cancel.add_argument("--broker", default=None, help="redis URL of the run's broker (default: EDITBATCH_BROKER)")
    _add_cluster(cancel)

    worker = sub.add_parser("worker", help="start one worker bound to one device (and its queue)")
    _add_config(worker)
    worker.add_argument("--device", default=os.environ.get("EDITBATCH_DEVICE"),
                        help="CUDA index (0, 1, ...), cpuN, or node:index")
    worker.add_argument("--broker", default=None, help="redis URL (default: EDITBATCH_BROKER, then cluster.broker)")
    worker.add_argument("--loglevel", default="INFO")

    judge = sub.add_parser("judge-worker", help="start one judge worker: threads that ask the judge of the "
                                                "config's evaluate section (no model, no device)")
    _add_config(judge)
    judge.add_argument("--broker", default=None, help="redis URL (default: EDITBATCH_BROKER, then cluster.broker)")
    judge.add_argument("--loglevel", default="INFO")

    validate = sub.add_parser("validate", help="check a config and every dataset item without running anything")
    _add_config(validate)

    tiny = sub.add_parser("make-tiny", help="write a tiny random-weight pipeline (offline) for tests and dry runs")
    tiny.add_argument("family", help="instruct_pix2pix, qwen_image_edit, qwen_image_edit_plus or flux_kontext")
    tiny.add_argument("directory")

    report = sub.add_parser("report", help="write a static HTML report (timeline, gallery) of one or more run folders")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run output folders; several are compared by item id")
    report.add_argument("-o", "--output", help="the HTML file to write (default: RUN_DIR/report.html of the first run)")

    score = sub.add_parser("score", help="score a run folder (or any folder of outputs named by item id): "
                                         "scores.jsonl and scores.json with 95% intervals")
    score.add_argument("run_dir", metavar="RUN_DIR")
    score.add_argument("--preset", help="gedit, imgedit, kris, magicbrush or emu (overrides evaluate.preset)")
    score.add_argument("--config", help="a YAML file whose `evaluate:` section to use (default: the run's config)")
    score.add_argument("--dataset", help="the dataset file the outputs are matched to by id (default: the run's)")
    score.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting, e.g. evaluate.judge.workers=8")
    score.add_argument("--broker", help="redis URL where judge workers serve (default: EDITBATCH_BROKER, else a "
                                        "private Redis and judge worker for this command)")

    status = sub.add_parser("status", help="progress of a job, or of a running or finished run folder")
    status.add_argument("run_dir", metavar="JOB_OR_DIR", help="a job id, or a run's output folder")
    status.add_argument("--broker", default=os.environ.get("EDITBATCH_BROKER"),
                        help="redis URL with password, for per-device state (default: EDITBATCH_BROKER)")
    status.add_argument("--json", action="store_true", help="a job's record as JSON")
    _add_cluster(status)

    serve = sub.add_parser("serve", help="run the job coordinator: queued jobs run one after another on the workers")
    serve.add_argument("--config", dest="cluster_config", required=True, metavar="CLUSTER",
                       help="cluster config: cluster (broker, devices, roots), model, jobs")
    serve.add_argument("--broker", default=None, help="redis URL (default: EDITBATCH_BROKER, then cluster.broker)")
    serve.add_argument("--start-workers", action="store_true", help="also start one worker per device (one box)")
    serve.add_argument("--log-dir", default=None, help="with --start-workers: the workers' logs")
    serve.add_argument("--loglevel", default="INFO")

    submit = sub.add_parser("submit", help="queue run configs as jobs of `editbatch serve`; prints the job ids")
    submit.add_argument("configs", nargs="+", metavar="CONFIG")
    submit.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    submit.add_argument("--id", default=None, help="your own job id (submitting it again is harmless)")
    submit.add_argument("--wait", action="store_true", help="wait until the jobs end")
    submit.add_argument("--resume", action="store_true",
                        help="with --id: finish that ended (cancelled, failed) job on its folder, reusing finished "
                             "items; submits it if no such job exists")
    submit.add_argument("--broker", default=None, help="redis URL (default: EDITBATCH_BROKER)")
    _add_cluster(submit)

    jobs = sub.add_parser("jobs", help="list jobs (default), resume one, or prune old records")
    jobs.add_argument("action", nargs="?", choices=["list", "resume", "prune"], default="list")
    jobs.add_argument("job", nargs="?", help="jobs resume: the job id")
    jobs.add_argument("--older-than", metavar="AGE", help="jobs prune: ended more than AGE ago (30d, 12h, 45m)")
    jobs.add_argument("--state", choices=["queued", "running", "done", "failed", "cancelled"])
    jobs.add_argument("--broker", default=None, help="redis URL (default: EDITBATCH_BROKER)")
    _add_cluster(jobs)

    wait = sub.add_parser("wait", help="wait until a job ends (exit 0 all ok, 1 failures, 130 cancelled)")
    wait.add_argument("job")
    wait.add_argument("--broker", default=None, help="redis URL (default: EDITBATCH_BROKER)")
    _add_cluster(wait)
    return parser


def _add_cluster(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", dest="cluster_config", metavar="CLUSTER",
                   help="the cluster config of `editbatch serve` (its broker, namespace and queue)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("run", "resume", "retry"):
        from .producer.cancel import stop_on_sigterm

        stop_on_sigterm()
    try:
        if args.command == "run":
            return _cmd_run(args, parser)
        if args.command in ("resume", "retry"):
            return _cmd_resume(args)
        if args.command == "cancel":
            return _cmd_cancel(args)
        if args.command == "worker":
            return _cmd_worker(args, parser)
        if args.command == "judge-worker":
            return _cmd_judge_worker(args, parser)
        if args.command == "validate":
            return _cmd_validate(args, parser)
        if args.command == "make-tiny":
            from .models.tiny import FAMILIES, build_tiny

            if args.family not in FAMILIES:
                import difflib

                close = difflib.get_close_matches(args.family, FAMILIES, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError("make-tiny", "FAMILY", f"unknown family {args.family!r}{hint} "
                                  f"(have: {', '.join(FAMILIES)})")
            print(build_tiny(args.family, args.directory))
            return 0
        if args.command == "report":
            from .report import write_report

            result = write_report(args.run_dirs, args.output)
            print(f"{result.html}: {result.items} items, written in {result.seconds:.1f}s")
            return 0
        if args.command == "score":
            from .scores.command import render, score_run

            scored = score_run(args.run_dir, config_path=args.config, preset=args.preset, dataset=args.dataset,
                               overrides=args.overrides, broker=args.broker, log=lambda m: print(m, flush=True))
            print(render(scored))
            return 1 if scored.failed else 0
        if args.command == "status":
            if not os.path.isdir(args.run_dir):
                _job_or_missing_folder(args, args.run_dir)
                from .jobs.commands import cmd_job_status

                return cmd_job_status(args)
            from .run_status import read_status, render_status

            print(render_status(read_status(args.run_dir, args.broker)))
            return 0
        if args.command in ("serve", "submit", "jobs", "wait"):
            return _cmd_jobs(args, parser)
    except EditBatchError as exc:
        print(f"editbatch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("editbatch: interrupted; the processes this run started were stopped (tasks already queued on "
              "workers you started yourself may still run)", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
            raise
        # A full or read-only disk under a file the command writes: what it wrote before is intact.
        print(f"editbatch: error: cannot write {exc.filename or 'a file'}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - broker trouble: one line, exit 2
        from kombu.exceptions import OperationalError
        from redis.exceptions import RedisError

        if not isinstance(exc, (RedisError, OperationalError)):
            raise
        print(f"editbatch: error: broker unreachable or refusing us: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_USAGE


def _job_or_missing_folder(args, name: str) -> None:
    """`status`/`cancel` of something that is not a folder: a job id when a broker is known, else a typo."""
    from .jobs.store import JOB_ID

    broker_known = args.broker or os.environ.get("EDITBATCH_BROKER") or getattr(args, "cluster_config", None)
    if os.sep in name or name.startswith(".") or not JOB_ID.match(name):
        raise ConfigError(name, None, "no such run folder")
    if not broker_known:
        raise ConfigError(name, None, "no such run folder; for a job id, pass --broker URL or set EDITBATCH_BROKER")


def _cmd_run(args, parser) -> int:
    from .config import load_config
    from .producer.run import execute

    from .producer.run import RunOptions

    path = _config_path(args, parser)
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other")
    config = load_config(path, args.overrides)
    options = RunOptions(strict=args.strict, resume=args.resume, overwrite=args.overwrite, force=args.force)
    return execute(config, source=path, options=options).exit_code


def _cmd_resume(args) -> int:
    """`resume DIR` and `retry DIR`: the folder's own config, with --resume."""
    from pathlib import Path

    from .config import load_config
    from .producer.run import RunOptions, execute

    folder = Path(args.output_dir)
    resolved = folder / layout.CONFIG
    if not resolved.is_file():
        raise ConfigError(str(folder), None, "no config.resolved.yaml here: not an editbatch output folder")
    if args.command == "retry" and not (folder / layout.SUMMARY).is_file():
        raise ConfigError(str(folder), None, "this run has not finished (no summary.json): use `editbatch resume`")
    overrides = [f"output_dir={folder.resolve()}"]
    broker = args.broker or os.environ.get("EDITBATCH_BROKER")
    if broker:
        overrides.append(f"cluster.broker={broker}")
    config = load_config(resolved, overrides)
    if "***" in config.cluster.broker:
        raise ConfigError(str(resolved), "cluster.broker", "the run used an external broker whose password is "
                                                           "not stored: pass --broker URL or set EDITBATCH_BROKER")
    options = RunOptions(resume=True, force=getattr(args, "force", False), only_failed=args.command == "retry")
    return execute(config, source=str(resolved), options=options).exit_code


def _cmd_jobs(args, parser) -> int:
    from .jobs import commands

    if args.command == "serve":
        from .jobs.serve import serve

        return serve(args.cluster_config, broker=args.broker, start_workers=args.start_workers,
                     log_dir=args.log_dir, loglevel=args.loglevel)
    if args.command == "submit":
        return commands.cmd_submit(args, parser)
    if args.command == "jobs":
        return commands.cmd_jobs(args, parser)
    return commands.cmd_wait(args)


def _cmd_cancel(args) -> int:
    from pathlib import Path

    if not os.path.isdir(args.output_dir):
        _job_or_missing_folder(args, args.output_dir)
        from .jobs.commands import cmd_job_cancel

        return cmd_job_cancel(args)

    from .producer.cancel import cancel_run

    print(cancel_run(Path(args.output_dir), broker=args.broker or os.environ.get("EDITBATCH_BROKER")))
    return 0


def _cmd_validate(args, parser) -> int:
    from .config import load_config
    from .producer.run import prepare_items

    path = _config_path(args, parser)
    config = load_config(path, args.overrides)
    from .preflight import preflight

    preflight(config, path)
    items = prepare_items(config, path, strict=False)
    from .dataset import where

    bad = [i for i in items if not i.valid]
    print(f"{path}: config ok; mode {config.schedule.mode} on {len(config.devices)} device(s) "
          f"({', '.join(d.queue for d in config.devices)}); model {config.model.type} ({config.model.path})")
    print(f"{config.dataset.path}: {len(items)} items, {len(items) - len(bad)} valid, {len(bad)} invalid")
    for item in bad:
        print(f"  {where(item)}: {item.error}")
    return 1 if bad else 0


def _cmd_worker(args, parser) -> int:
    from .config import load_config
    from .devices import SHARED_QUEUE, parse_device

    path = _config_path(args, parser)
    if not args.device:
        parser.error("--device is needed (or EDITBATCH_DEVICE)")
    try:
        device = parse_device(args.device)
    except ValueError as exc:
        raise ConfigError("--device", None, str(exc)) from None
    config = load_config(path, args.overrides, check_dataset=False)
    broker = _worker_broker(args, config)
    path = _overridden(path, config, args.overrides)
    os.environ.update(EDITBATCH_DEVICE=device.spec, EDITBATCH_CONFIG=os.path.abspath(path), EDITBATCH_BROKER=broker)
    if device.kind == "cuda":
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", str(device.index))

    from .celery_app import app  # after the environment is set: it binds the device

    from .models.identity import model_identity, shared_queue

    # The model's own shared queue: workers of another model on this broker never take its items.
    # The plain `shared` queue serves callers of the task contract that name no model.
    queues = [device.queue, shared_queue(model_identity(config.model)), SHARED_QUEUE]
    # One thread per held task: they take the device one at a time (workers/device_slot.py), and each
    # finishes its files, commit and ack off the device while the next computes.
    app.worker_main([
        "worker", "--pool", "threads", "--concurrency", str(config.cluster.prefetch), "--prefetch-multiplier", "1",
        "--queues", ",".join(queues), "--hostname", f"{device.queue}@%h",
        "--without-mingle", "--without-gossip", "--loglevel", args.loglevel,
    ])
    return 0


def _worker_broker(args, config) -> str:
    broker = args.broker or os.environ.get("EDITBATCH_BROKER") or config.cluster.broker
    if broker == "auto":
        raise EditBatchError("a worker needs a broker: pass --broker redis://... or set EDITBATCH_BROKER "
                             "(cluster.broker is 'auto', which only `editbatch run` can start)")
    return broker


def _overridden(path: str, config, overrides: list[str]) -> str:
    """The config file a worker's hooks read: `path`, or with --set overrides, a temporary copy with them."""
    if not overrides:
        return path
    import atexit
    import tempfile

    from .config import dump_config

    fd, tmp = tempfile.mkstemp(prefix="editbatch-worker-", suffix=".yaml")
    with os.fdopen(fd, "w") as fh:
        fh.write(dump_config(config, redact=True))  # the broker URL travels in EDITBATCH_BROKER
    atexit.register(os.unlink, tmp)
    return tmp


def _cmd_judge_worker(args, parser) -> int:
    from .scores.judge.setup import make_stage
    from .workers.judging import load_judge_config

    path = _config_path(args, parser)
    config = load_judge_config(path, args.overrides)
    broker = _worker_broker(args, config)
    queue = make_stage(config.evaluate, path).queue
    path = _overridden(path, config, args.overrides)
    os.environ.update(EDITBATCH_JUDGE=queue, EDITBATCH_CONFIG=os.path.abspath(path), EDITBATCH_BROKER=broker)
    os.environ.pop("EDITBATCH_DEVICE", None)

    from .celery_app import app  # after the environment is set: it binds the judge's queue

    # Threads: a judge worker waits on the network. Prefetch 1: it holds no more items than it asks at once.
    app.worker_main([
        "worker", "--pool", "threads", "--concurrency", str(config.evaluate.judge.workers),
        "--prefetch-multiplier", "1", "--queues", queue, "--hostname", f"judge-{os.getpid()}@%h",
        "--without-mingle", "--without-gossip", "--loglevel", args.loglevel,
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
