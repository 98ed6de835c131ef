"""The manifest while a run lasts and at its end: appended, read back by offset, rewritten line by line."""

from __future__ import annotations

import json

from editbatch.counts import count
from editbatch.producer.outputs import Manifest, iter_manifest
from editbatch.producer.summary import summarize
from editbatch.scheduling import make_policy


def test_the_manifest_keeps_offsets_not_records_and_rewrites_in_input_order(tmp_path):
    manifest = Manifest(tmp_path)
    for index in (2, 0, 1):
        manifest.add({"index": index, "id": f"i{index}", "status": "failed", "retrying": True, "error": "x"})
    manifest.add({"index": 0, "id": "i0", "status": "ok", "device": "a", "started_at": 1.0, "finished_at": 2.0})
    assert manifest.get(1) == {"index": 1, "id": "i1", "status": "failed", "retrying": True, "error": "x"}
    assert manifest.get(0)["status"] == "ok" and manifest.get(7) is None
    assert count(manifest.statuses()).as_dict() == {"total": 3, "ok": 1, "failed": 0, "invalid": 0, "not_run": 0,
                                                     "pending": 2}
    assert not hasattr(manifest, "records")  # a 100,000-item run does not hold them
    written = list(manifest.finalize())
    assert [r["index"] for r in written] == [0, 1, 2]
    lines = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert lines == written == list(iter_manifest(tmp_path / "manifest.jsonl"))


def test_the_summary_takes_the_rewritten_manifest_in_one_pass(tmp_path):
    manifest = Manifest(tmp_path)
    for i in range(6):
        manifest.add({"index": i, "id": f"i{i}", "status": "ok", "device": "ab"[i % 2], "started_at": 10.0 + i,
                      "finished_at": 10.5 + i, "batch": None})
    summary = summarize(manifest.finalize(), mode="nosync", devices=["a", "b"], ordinal_of={i: i for i in range(6)},
                        dispatch_started_at=10.0, policy_factory=lambda: make_policy("nosync", 6, ["a", "b"], "q"))
    assert (summary["items"], summary["ok"], summary["makespan_s"]) == (6, 6, 5.5)
    assert summary["efficiency"] is not None and summary["not_applicable"] is None
    assert len((tmp_path / "manifest.jsonl").read_text().splitlines()) == 6
