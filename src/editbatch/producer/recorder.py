"""The run's record-keeping: one manifest line per result, each item's attempts and errors, what failed.

The recorder decides what a result means for its item: done, failed for
good, or to be tried again in the next round (`schedule.retries`). It is
the only writer of the manifest while the run lasts; counts come from its
records through `counts.py`.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Iterator
from typing import Any, Callable

from .. import clock, counts
from ..dataset import Item
from ..models.base import EditCancelled
from .outputs import Manifest, manifest_record
from .resume import Carried


class Recorder:
    def __init__(self, out_dir: Path, items: list[Item], seeds: dict[int, int], carried: Carried, *, retries: int,
                 todo: list[Item], run_id: str, clock_vs_redis: float | None = None):
        self.run_id = run_id  # each record names the run that computed it (a folder may see several)
        self.clock_vs_redis = clock_vs_redis  # the producer's clock against Redis's: workers' times move onto it
        self.items = items
        self.seeds = seeds
        self.retries = retries
        self.manifest = Manifest(out_dir)
        self.attempts: dict[int, int] = {}  # item index -> attempts made by this run
        self.unstarted: dict[int, int] = {}  # item index -> times it was lost before any worker started it
        # item index -> errors of its failed attempts, earlier runs of the folder included
        self.errors: dict[int, list[str]] = {
            index: list(old.get("errors") or ([old["error"]] if old.get("error") else []))
            for index, old in carried.history.items()}
        self.failures: list[tuple[str, str]] = []  # (item id, last error) of items that ended failed
        self.on_ok: Callable[[Item, dict[str, Any]], None] | None = None  # told of each item done (the judge feed)
        to_run = {i.index for i in todo}
        for item in items:
            if not item.valid:
                self.manifest.add(manifest_record(item, seeds[item.index]))
            elif item.index in carried.done:
                self.manifest.add(carried.done[item.index])
            elif item.index not in to_run:  # left as it was (`retry` runs failed items only)
                self.manifest.add(carried.previous.get(item.index) or manifest_record(
                    item, seeds[item.index], {"status": counts.NOT_RUN, "error": "not run yet"}))

    def record(self, item: Item, result: dict[str, Any], round_no: int, *, stopping: bool) -> bool:
        """Put one attempt's result in the manifest; True if the item is to be tried again."""
        index = item.index
        result = clock.on_producer_clock(result, self.clock_vs_redis)
        if str(result.get("error") or "").startswith(f"{EditCancelled.__name__}:"):
            # Stopped mid-edit because the run was cancelled: it did not fail, it was not run.
            self.close(item, result["error"], round_no, status=counts.NOT_RUN)
            return False
        hopeless = False
        if result.get("lost") and not result.get("started"):
            # Queued on, or held by, a worker that went away before starting it: not an attempt,
            # unless it keeps happening (no live worker reads its queue): then it fails like one.
            sends = self.unstarted[index] = self.unstarted.get(index, 0) + 1
            if sends <= self.retries + 1 and not stopping:
                return True
            result = {**result, "error": f"never started after {sends} sends: {result.get('error')}"}
            hopeless = True  # sending it again would end the same way
        attempts = self.attempts[index] = self.attempts.get(index, 0) + 1
        errors = self.errors.setdefault(index, [])
        failed = result.get("status") != counts.OK
        if failed:
            errors.append(result.get("error") or "failed")
        retry = failed and not stopping and not hopeless and attempts <= self.retries
        record = manifest_record(item, self.seeds[index], {**result, "status": counts.OK if not failed
                                                           else counts.FAILED})
        record.update(round=round_no, attempts=attempts, errors=list(errors), reused=bool(result.get("reused")),
                      run=result.get("computed_in_run") or self.run_id)
        if retry:
            record["retrying"] = True  # superseded by the retry's record; a resume reads it as failed
        elif failed:
            self.failures.append((item.id, record["error"] or "failed"))
        self.manifest.add(record)
        if not failed and self.on_ok is not None:
            self.on_ok(item, record)
        return retry

    def close(self, item: Item, error: str, round_no: int, *, status: str = counts.FAILED) -> None:
        """Settle an item that will not run (again): keep its last failure, or record `status` with `error`."""
        last = self.manifest.get(item.index)
        if last is not None and last.get("retrying"):
            record = {k: v for k, v in last.items() if k != "retrying"}
            status = counts.FAILED
        else:
            record = manifest_record(item, self.seeds[item.index], {"status": status, "error": error})
            record.update(round=round_no, attempts=self.attempts.get(item.index, 0),
                          errors=self.errors.get(item.index, []) + ([error] if status == counts.FAILED else []),
                          reused=False)
        if status == counts.FAILED:
            self.failures.append((item.id, record["error"] or error))
        self.manifest.add(record)

    def settled(self, index: int) -> bool:
        state = self.manifest.state.get(index)
        return state is not None and counts.is_final({"status": state[0], "retrying": state[1]})

    def counts(self) -> counts.Counts:
        return counts.count(self.manifest.statuses(), total=len(self.items))

    def finalize(self) -> Iterator[dict[str, Any]]:
        """The manifest rewritten in input order: its records, streamed (see `Manifest.finalize`)."""
        return self.manifest.finalize()
