"""`editbatch cancel OUTPUT_DIR`: stop a run from another terminal, keeping what finished.

The run's state key in Redis is set to ``cancelled``: its producer stops
dispatching within a second, workers skip its queued tasks and stop a
running edit at the next denoising step. A producer on this machine is also
sent SIGINT (the same as Ctrl-C in its terminal), which is the only way in
for a run on a private Redis whose password is stored nowhere.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from .. import redisconn, runstate
from ..errors import ConfigError
from .resume import RUN_FILE, producer_alive, read_run_file


def cancel_run(out_dir: Path, *, broker: str | None) -> str:
    run = read_run_file(out_dir)
    if run is None:
        raise ConfigError(str(out_dir), None, f"no {RUN_FILE} here: not an editbatch output folder")
    run_id, state = str(run.get("run_id")), run.get("state")
    if state != runstate.RUNNING:
        raise ConfigError(str(out_dir), None, f"run {run_id} is not running (state: {state})")
    done = []
    if broker:
        client = redisconn.connect(broker)
        try:
            runstate.mark_cancelled(client, str(run.get("namespace") or "editbatch"), run_id)
        finally:
            client.close()
        done.append("marked cancelled in Redis")
    if producer_alive(run) and _is_editbatch(run["pid"]):  # never signal a later process that got its pid
        os.kill(run["pid"], signal.SIGINT)
        done.append(f"producer {run['pid']} interrupted")
    if not done:
        raise ConfigError(str(out_dir), None, f"run {run_id} runs on {run.get('host')}: pass --broker URL "
                                              "(or set EDITBATCH_BROKER) to cancel it through Redis")
    return f"run {run_id}: " + ", ".join(done)


def _is_editbatch(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"editbatch" in fh.read()
    except OSError:
        return False
