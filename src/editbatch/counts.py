"""How many items of a run are ok, failed, invalid or not run: counted here, and only here.

The producer's progress, the summary, `editbatch status`, the job record and
the report all read these counts from the same manifest records, so they
cannot disagree. An item is `not_run` when the run was stopped (Ctrl-C,
`editbatch cancel`, a job cancelled) before it produced a result: it did not
fail, and `editbatch resume` runs it while `editbatch retry` does not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

OK = "ok"
FAILED = "failed"
INVALID = "invalid"
NOT_RUN = "not_run"
STATUSES = (OK, FAILED, INVALID, NOT_RUN)


@dataclass(frozen=True)
class Counts:
    total: int
    ok: int = 0
    failed: int = 0
    invalid: int = 0
    not_run: int = 0

    @property
    def pending(self) -> int:
        """Items with no final status yet (running, queued, or being retried)."""
        return max(0, self.total - self.ok - self.failed - self.invalid - self.not_run)

    @property
    def done(self) -> int:
        return self.total - self.pending

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "pending": self.pending}

    def text(self) -> str:
        """`6 ok, 0 failed, 0 invalid, 6 not run` (not run only when there are any)."""
        parts = [f"{self.ok} ok", f"{self.failed} failed", f"{self.invalid} invalid"]
        if self.not_run:
            parts.append(f"{self.not_run} not run")
        return ", ".join(parts)


def is_final(record: dict[str, Any]) -> bool:
    """A manifest record that settles its item (a failed attempt about to be retried does not)."""
    return record.get("status") in STATUSES and not record.get("retrying")


def count(records: Iterable[dict[str, Any]], total: int | None = None) -> Counts:
    """Counts over manifest records (one per item; later records of an index replace earlier ones)."""
    last: dict[Any, dict[str, Any]] = {}
    for n, record in enumerate(records):
        last[record.get("index", f"#{n}")] = record
    final = [r for r in last.values() if is_final(r)]
    by = {s: sum(1 for r in final if r.get("status") == s) for s in STATUSES}
    return Counts(total=len(last) if total is None else total, **by)
