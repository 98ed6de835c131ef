"""Where a run may put its files, checked before anything is written.

A run writes `images/`, `manifest.jsonl`, `summary.json` and more straight
into `output_dir`, so a folder shared with the system or the user's whole
home would be littered (or, as root, damaged). Those are refused by name;
anything else must be a folder we can create.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import layout
from .errors import ConfigError

# Top-level system folders: a run's files must never land directly in one.
SYSTEM_FOLDERS = ("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/proc",
                  "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/home")
# Kernel file systems: nothing written there is a file, so refuse anything below them too.
PSEUDO_FILESYSTEMS = ("/proc", "/sys", "/dev")


def refused_output_dir(path: Path) -> str | None:
    """Why `path` may not be a run's output folder, or None."""
    real = os.path.realpath(path)
    if real in SYSTEM_FOLDERS or real == os.path.realpath(Path.home()):
        return f"{path} is a system or home folder; give the run a folder of its own, e.g. runs/NAME"
    for pseudo in PSEUDO_FILESYSTEMS:
        if real.startswith(pseudo + os.sep):
            return f"{path} is inside {pseudo}, which holds no real files"
    return None


def missing_parent_problem(path: Path) -> str | None:
    """Why `path` could not be created, judged without creating anything (for `validate`)."""
    probe = Path(os.path.abspath(path))
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"cannot create {path}: {probe} is a file, not a folder"
    return None


def create_output_dir(path: Path, source: str) -> Path:
    """Create the run's folder (and images/); any failure is one config error naming `output_dir`."""
    out_dir = path.resolve()
    try:
        (out_dir / layout.IMAGES).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(source, "output_dir", f"cannot create {path}: {exc.strerror or exc}") from None
    return out_dir
