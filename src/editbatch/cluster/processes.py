"""Child-process helpers: children die with the process that started them."""

from __future__ import annotations

import ctypes
import signal
import subprocess

_PR_SET_PDEATHSIG = 1


def child_preexec() -> None:
    """Runs in the child before exec: new process group, and SIGTERM when our parent dies.

    The process group keeps the terminal's Ctrl-C away from workers (the
    producer stops them in order); the death signal covers a producer that is
    killed outright, so nothing of a run outlives it.
    """
    import os

    os.setpgid(0, 0)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the producer's own cleanup still runs
        pass


def stop_processes(procs: list[subprocess.Popen], first: signal.Signals, grace_s: float) -> None:
    """Signal every live process, wait up to `grace_s` in total, then kill what is left."""
    import time

    live = [p for p in procs if p.poll() is None]
    for p in live:
        try:
            p.send_signal(first)
            p.send_signal(signal.SIGCONT)  # a stopped (hung) process acts on nothing until continued
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    for p in live:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
