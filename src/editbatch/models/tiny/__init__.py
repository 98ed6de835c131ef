"""Tiny random-weight pipelines, built offline, for tests and demos on CPU.

`build_tiny(family, out_dir)` builds one from configs (no download) and saves it;
`ensure_tiny(family)` returns a cached copy under ``$EDITBATCH_CACHE/tiny``
(default ``~/.cache/editbatch/tiny``), building it on first use. Weights depend
only on the family and `TINY_VERSION`: bump the version when a builder changes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

TINY_VERSION = "v1"
FAMILIES = ("instruct_pix2pix", "qwen_image_edit", "qwen_image_edit_plus", "flux_kontext")
SEED = 0
_BUILD_LOCK = threading.Lock()  # builds seed the global torch RNG: one at a time per process


def cache_root() -> Path:
    return Path(os.environ.get("EDITBATCH_CACHE") or Path.home() / ".cache" / "editbatch")


def tiny_dir(family: str) -> Path:
    return cache_root() / "tiny" / f"{family}-{TINY_VERSION}"


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"no tiny pipeline for {family!r} (have: {', '.join(FAMILIES)})")


def _build_pipeline(family: str):
    if family == "instruct_pix2pix":
        from .pix2pix import build

        return build()
    if family == "flux_kontext":
        from .flux import build

        return build()
    from .qwen import build

    return build(plus=family == "qwen_image_edit_plus")


def build_tiny(family: str, out_dir: Path) -> Path:
    """Build the tiny pipeline for `family` with fixed seeds and save it to `out_dir`."""
    import torch

    _check_family(family)
    out_dir = Path(out_dir)
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):  # leave the caller's global RNG state alone
        torch.manual_seed(SEED)
        pipe = _build_pipeline(family)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # dropout off: a fresh build and its reload must agree
    pipe.save_pretrained(out_dir)
    return out_dir


def ensure_tiny(family: str) -> Path:
    """The cached tiny pipeline folder for `family`, built atomically if missing.

    Safe when several processes call it at once: each builds into its own temp
    folder next to the target and renames it into place; a loser of the race
    drops its copy and uses the winner's. Nobody sees a half-written folder.
    """
    _check_family(family)
    target = tiny_dir(family)
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build_tiny(family, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "model_index.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


__all__ = ["FAMILIES", "TINY_VERSION", "build_tiny", "cache_root", "ensure_tiny", "tiny_dir"]
