"""What a worker says of a payload that breaks its task's contract (edit and judge alike)."""

from __future__ import annotations

import pytest

from editbatch.tasks.contract import EditTask, PayloadError
from editbatch.tasks.judge_contract import JudgeTask

EDIT = {"id": "a", "images": ["/d/a.png"], "instruction": "snow", "output_dir": "/runs/x", "seed": 1}
JUDGE = {"id": "a", "instruction": "snow", "output": "/runs/x/images/a.png", "queue": "judge-1", "cache_dir": "/c"}


@pytest.mark.parametrize("cls, good", [(EditTask, EDIT), (JudgeTask, JUDGE)])
@pytest.mark.parametrize("change, message", [
    (lambda p: [p], "payload must be a JSON object, got list"),
    (lambda p: {**p, "v": 2}, "unsupported payload version 2 (this worker speaks 1)"),
    (lambda p: {**p, "colour": "red"}, "unknown payload fields: colour"),
    (lambda p: {k: v for k, v in p.items() if k != "instruction"}, "missing payload fields: instruction"),
])
def test_a_broken_payload_is_refused_with_what_is_wrong(cls, good, change, message):
    assert cls.from_payload({"v": 1, **good}).id == "a"
    with pytest.raises(PayloadError) as caught:
        cls.from_payload(change(good))
    assert str(caught.value) == message


def test_each_contract_checks_its_own_types():
    with pytest.raises(PayloadError, match="'seed' must be an integer"):
        EditTask.from_payload({**EDIT, "seed": True})
    with pytest.raises(PayloadError, match="'inputs' must be a list of file paths"):
        JudgeTask.from_payload({**JUDGE, "inputs": "/d/a.png"})
