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


class Tally:
    """Counts taken one record at a time, keeping only each index's last status (a 100,000-item
    manifest streams through it); later records of an index replace earlier ones."""

    def __init__(self) -> None:
        self.last: dict[Any, tuple[Any, bool]] = {}
        self._seen = 0

    def add(self, record: dict[str, Any]) -> None:
        self.last[record.get("index", f"#{self._seen}")] = (record.get("status"), bool(record.get("retrying")))
        self._seen += 1

    def counts(self, total: int | None = None) -> Counts:
        by = dict.fromkeys(STATUSES, 0)
        for status, retrying in self.last.values():
            if status in by and not retrying:  # as `is_final`
                by[status] += 1
        return Counts(total=len(self.last) if total is None else total, **by)


def count(records: Iterable[dict[str, Any]], total: int | None = None) -> Counts:
    """Counts over manifest records (one per item; later records of an index replace earlier ones)."""
    tally = Tally()
    for record in records:
        tally.add(record)
    return tally.counts(total)
