"""Per-item seeds that depend only on the run seed and the item id.

Not on the device, the worker or the order of execution, so an item's output
is the same in every mode and on every worker.
"""

from __future__ import annotations

import hashlib


def item_seed(run_seed: int, item_id: str) -> int:
    digest = hashlib.sha256(f"{run_seed}\x00{item_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
