"""Circular evaluation: rotations, a level right only if every rotation is, metrics by hand."""

from __future__ import annotations

import pytest

from hiertrain.metrics.circular import circular_metrics, combine, rotation_record, rotations
from hiertrain.base.errors import HierError
from hiertrain.metrics.predictions import LevelPrediction, SamplePrediction


def test_rotations_are_cyclic_and_start_as_given():
    assert rotations(["a", "b", "c", "d"]) == [["a", "b", "c", "d"], ["b", "c", "d", "a"], ["c", "d", "a", "b"], ["d", "a", "b", "c"]]
    assert rotations(["x"]) == [["x"]]


def _level(level, truth, options, picks):
    """A circular level: `picks[k]` = the letter index picked under rotation k (None = unparsed)."""
    recs = [rotation_record(opts, truth, None if p is None else "ABCD"[p], p) for opts, p in zip(rotations(options), picks)]
    first = recs[0]
    lv = LevelPrediction(level=level, truth=truth, options=list(options), reply=first["reply"], letter=first["letter"],
                         predicted=first["predicted"], correct=first["correct"])  # fmt: skip
    return combine(lv, recs)


def test_a_level_counts_only_when_every_rotation_is_right():
    knows = _level(1, "b", ["a", "b", "c", "d"], [1, 0, 3, 2])  # follows "b" around: right each time
    always_a = _level(2, "a", ["a", "b", "c", "d"], [0, 0, 0, 0])  # right in rotation 0 only
    assert knows.correct and not always_a.correct
    assert always_a.letter == "A" and always_a.predicted == "a"  # rotation 0's answer is kept
    assert [r["correct"] for r in always_a.detail["rotations"]] == [True, False, False, False]
    with pytest.raises(HierError, match="rotation 0"):
        combine(LevelPrediction(level=1, truth="a", options=["b", "a"]), [rotation_record(["a", "b"], "a", "A", 0)])


def test_circular_metrics_by_hand():
    samples = [
        SamplePrediction(0, [_level(1, "b", ["a", "b"], [1, 0]), _level(2, "c", ["c", "d", "e", "f"], [0, 0, 0, 0])]),
        SamplePrediction(1, [_level(1, "a", ["a", "b"], [0, 1]), _level(2, "d", ["c", "d", "e", "f"], [1, 0, None, 2])]),
        SamplePrediction(2, [_level(1, "a", ["b", "a"], [0, 0]), _level(2, "f", ["c", "d", "e", "f"], [0, 0, 0, 0])]),
    ]
    # circular: sample 0 level 1 right (B then A: "b" both times), level 2 wrong; sample 1 level 1
    # right, level 2 wrong; sample 2 both wrong -> per level 2/3, 0/3; HCA 0
    from hiertrain.runs.eval_outputs import compute_metrics

    plain = compute_metrics(samples, 2)
    assert plain["per_level_accuracy"] == pytest.approx([2 / 3, 0.0]) and plain["hca"] == 0.0
    out = circular_metrics(samples, 2)["circular"]
    assert out["rotations"] == [2, 4]
    # first rotation: level 1 right in samples 0, 1 (2/3); level 2 right in 0 (c at A) and 1 (d at B): 2/3;
    # HCA: samples 0 and 1 -> 2/3
    first = out["first_rotation"]
    assert first["per_level_accuracy"] == pytest.approx([2 / 3, 2 / 3]) and first["hca"] == pytest.approx(2 / 3)
    # the one unparsed answer is sample 1's rotation 2: rotation 0 parsed everywhere
    assert first["unparseable_rate"] == 0.0
    bias = out["letter_bias"]
    # truths per rotation: level 1 sample 0 B, A; sample 1 A, B; sample 2 B, A;
    # level 2 (4 rotations each): every letter once per sample -> 3 each
    assert bias["truth_counts"] == [3 + 3, 3 + 3, 3, 3]
    # picks: level 1: B,A | A,B | A,A -> A 4, B 2; level 2: A,A,A,A | B,A,-,C | A,A,A,A -> A 9, B 1, C 1
    assert bias["pick_counts"] == [13, 3, 1, 0]


def test_a_plain_run_has_no_circular_block():
    lv = LevelPrediction(level=1, truth="a", options=["a", "b"], letter="A", predicted="a", correct=True)
    assert circular_metrics([SamplePrediction(0, [lv])], 1) is None
