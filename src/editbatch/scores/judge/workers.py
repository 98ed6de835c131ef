"""The judge workers `editbatch score` asks: those serving on --broker / $EDITBATCH_BROKER, or its own.

Without a broker named, the command starts a private Redis and one
`editbatch judge-worker` process (evaluate.judge.workers threads) whose
config carries the roots this scoring needs (the outputs' folder, the
inputs' folders, the cache), and stops both when it ends.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

import yaml

from ... import keys, layout, liveness, redisconn
from ...config import EvaluateConfig
from ...errors import ClusterError

NAMESPACE = "editbatch"
START_TIMEOUT_S = 60.0


def serving(redis, namespace: str, queue: str) -> int:
    """How many judge workers serve `queue` now."""
    names = [n.decode() if isinstance(n, bytes) else n for n in redis.smembers(keys.judge_workers(namespace, queue))]
    return sum(1 for seen in liveness.look(redis, namespace, names).values() if seen.serving)


@contextlib.contextmanager
def judge_workers(broker: str | None, evaluate: EvaluateConfig, queue: str, folder: Path, reads: Iterable[Path],
                  cache_dir: Path, log) -> Iterator[str]:
    """The broker URL where judge workers serve `queue` (started here when no broker is named)."""
    url = broker or os.environ.get("EDITBATCH_BROKER")
    if url:
        yield url
        return
    from ...cluster.processes import child_preexec, stop_processes
    from ...cluster.redis_server import RedisServer

    logs = folder / layout.LOGS
    logs.mkdir(parents=True, exist_ok=True)
    server = RedisServer(logs)
    proc = None
    try:
        url = server.start()
        config = logs / "judge-worker.yaml"
        config.write_text(yaml.safe_dump(_worker_config(evaluate, folder, reads, cache_dir), sort_keys=False))
        with (logs / "judge-worker.log").open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "editbatch", "judge-worker", "--config", str(config)],
                                    env={**os.environ, "EDITBATCH_BROKER": url, "PYTHONUNBUFFERED": "1"},
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=child_preexec)
        _wait_serving(url, queue, proc, logs / "judge-worker.log")
        yield url
    finally:
        if proc is not None:
            import signal

            stop_processes([proc], signal.SIGTERM, grace_s=10.0)
        server.stop()


def _worker_config(evaluate: EvaluateConfig, folder: Path, reads: Iterable[Path], cache_dir: Path) -> dict:
    section = evaluate.model_dump(mode="json", exclude_none=True)
    if evaluate.judge.template:
        section["judge"]["template"] = str(Path(evaluate.judge.template).resolve())
    section["cache_dir"] = str(cache_dir.resolve())
    inputs = sorted({str(folder.resolve()), *(str(Path(p).resolve().parent) for p in reads)})
    return {"cluster": {"namespace": NAMESPACE, "input_roots": inputs,
                        "output_roots": [str(folder.resolve()), str(cache_dir.resolve())]},
            "evaluate": section}


def _wait_serving(url: str, queue: str, proc: subprocess.Popen, log_path: Path) -> None:
    redis = redisconn.connect(url)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not serving(redis, NAMESPACE, queue):
            if proc.poll() is not None:
                lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
                raise ClusterError(f"the judge worker exited with code {proc.returncode}: "
                                   f"{lines[-1] if lines else log_path}")
            if time.monotonic() > deadline:
                raise ClusterError(f"the judge worker did not start within {START_TIMEOUT_S:.0f}s (log: {log_path})")
            time.sleep(0.2)
    finally:
        redis.close()
