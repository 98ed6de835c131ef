"""`editbatch cancel OUTPUT_DIR`: stop a run from another terminal, keeping what finished.

The run's state key in Redis is set to ``cancelled``: its producer stops
dispatching within a second, workers skip its queued tasks and stop a
running edit at the next denoising step. A producer on this machine is also
sent SIGTERM, which it takes as Ctrl-C (`stop_on_sigterm`); that is the only
way in for a run on a private Redis whose password is stored nowhere. Not
SIGINT: a producer started in the background by a script (`editbatch run
... &`, `nohup`) has SIGINT ignored from its start, and would never hear it.
"""

from __future__ import annotations

import os
import signal
import threading
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
        os.kill(run["pid"], signal.SIGTERM)
        done.append(f"producer {run['pid']} stopped")
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


def stop_on_sigterm() -> None:
    """In a producer: SIGTERM (`editbatch cancel`, kill, systemd, docker stop) stops the run as Ctrl-C does.

    The run is marked cancelled, what it started is stopped and its files are
    kept (exit 130), where the default action would end the process with no
    summary. A second SIGTERM during that clean-up ends it at once."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers belong to the main thread (a job's run in the coordinator is stopped otherwise)

    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
