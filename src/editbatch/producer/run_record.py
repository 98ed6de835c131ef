"""run.json: who is running this output folder, written when the run starts.

`editbatch status` reads it to find the run's Redis keys and its producer.
The broker URL is stored with its password masked: a run folder is often
shared, and the workers get the real URL from their environment.
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from .outputs import write_json

RUN_FILE = "run.json"


def mask_password(url: str) -> str:
    """``redis://:secret@host`` -> ``redis://:***@host``; URLs without a password are unchanged."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def write_run_record(out_dir: Path, config, *, run_id: str, items: int, valid: int, broker: str) -> dict[str, Any]:
    record = {
        "run_id": run_id,
        "name": config.name,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "cwd": os.getcwd(),  # the manifest's relative input paths are relative to it
        "started_at": time.time(),
        "items": items,
        "valid_items": valid,
        "devices": [d.queue for d in config.devices],
        "mode": config.schedule.mode,
        "namespace": config.cluster.namespace,
        "broker": mask_password(broker),
        "broker_auto": config.cluster.broker == "auto",
    }
    write_json(out_dir / RUN_FILE, record)
    return record
