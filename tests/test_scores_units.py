"""The pure parts of scoring: presets' aggregations, answer parsing, intervals, cache keys, pixel metrics."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from editbatch.scores import stats
from editbatch.scores.cache import score_key
from editbatch.scores.item import ItemScorer, Texts
from editbatch.scores.presets import PRESETS, parse_answer, values_of


def judged(**scores):
    return {"judge": {"status": "ok", "scores": scores}}


def test_gedit_item_overall_and_mean_per_type_then_over_types():
    p = PRESETS["gedit"]
    v, failed = values_of(p, judged(edit_done=9, not_over_edited=4, naturalness=8, no_artifacts=2))
    assert not failed and v == {"SC": 4, "PQ": 2, "O": pytest.approx(math.sqrt(8))}
    rows = [{"category": "a", "values": {"O": 2.0}}, {"category": "a", "values": {"O": 4.0}},
            {"category": "b", "values": {"O": 9.0}}, {"category": "b", "failed": True, "values": {}}]
    agg = stats.aggregate(rows, ["O"], samples=200)["O"]
    assert agg["macro"]["mean"] == pytest.approx((3.0 + 9.0) / 2)  # per type, then over types
    assert agg["micro"]["mean"] == pytest.approx(5.0) and agg["micro"]["failed"] == 1
    assert agg["by_category"]["b"] == {"n": 1, "failed": 1, "mean": 9.0, "ci95": None}


def test_imgedit_and_kris_item_values():
    v, _ = values_of(PRESETS["imgedit"], judged(instruction=5, quality=4, preservation=3))
    assert v["overall"] == pytest.approx(4.0)
    v, _ = values_of(PRESETS["kris"], judged(consistency=1, quality=5, instruction=3))
    assert v == {"consistency": 0, "quality": 100, "instruction": 50, "overall": pytest.approx(50)}


def test_a_failed_judge_gives_no_values_and_counts_as_failed():
    values, failed = values_of(PRESETS["kris"], {"judge": {"status": "unparsed", "scores": None}})
    assert failed and values == {}


@pytest.mark.parametrize("text, problem", [
    ("7/10", "not JSON"), ("[1, 2]", "not a JSON object"),
    ('{"instruction": 5, "quality": 4}', "'preservation' missing"),
    ('{"instruction": 6, "quality": 4, "preservation": 1}', "outside 1-5"),
    ('{"instruction": true, "quality": 4, "preservation": 1}', "not a number"),
])
def test_answers_that_do_not_parse_are_errors_never_guesses(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_answer(PRESETS["imgedit"], text)


def test_a_fenced_json_answer_parses():
    scores, reason = parse_answer(PRESETS["imgedit"], '```json\n{"instruction": 5, "quality": 4, "preservation": 3, '
                                                      '"reason": "ok"}\n```')
    assert scores == {"instruction": 5, "quality": 4, "preservation": 3} and reason == "ok"


def test_bootstrap_interval_is_reproducible_and_holds_the_mean():
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    ci = stats.bootstrap_ci(values, samples=500)
    assert ci == stats.bootstrap_ci(values, samples=500)
    assert ci[0] < sum(values) / 5 < ci[1]
    assert stats.bootstrap_ci([3.0]) is None


def test_paired_difference_marks_the_better_run():
    a = {f"i{n}": float(n) for n in range(20)}
    b = {k: v + 1.0 + (0.1 if k.endswith("3") else 0) for k, v in a.items()}
    diff = stats.paired_difference(a, b, samples=300)
    assert diff["mean"] > 0.9 and diff["better"] == "second"
    assert stats.paired_difference(a, dict(a), samples=300)["better"] is None


def test_every_part_of_the_key_changes_it():
    base = {"output": "o", "inputs": ["i"], "target": "t", "instruction": "x", "scorer": "judge", "version": 1,
            "model": "m-2026-01-01", "template_sha256": "s", "decoding": {"temperature": 0, "seed": 42}}
    keys = {score_key(**base)}
    for part in base:
        changed = dict(base, **{part: "other"})
        keys.add(score_key(**changed))
    assert len(keys) == len(base) + 1


def test_pixel_metrics_of_known_images():
    black, white = Image.new("RGB", (16, 16)), Image.new("RGB", (8, 8), (255, 255, 255))
    scorer = ItemScorer(("l1_input", "l2_input", "psnr_input", "ssim_target", "l1_target"))
    scores = scorer.score(white, [black], white, Texts("x"))["metrics"]
    assert scores["l1_input"] == 1.0 and scores["l2_input"] == 1.0 and scores["psnr_input"] == 0.0
    assert scores["l1_target"] == 0.0 and scores["ssim_target"] == pytest.approx(1.0)
