"""Hierarchical metrics against hand computations, and their edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from hiertrain.metrics.classes import (
    MAX_DEPTH,
    HierarchicalConsistentAccuracy,
    HierarchicalF1,
    LeafAccuracy,
    PerLevelAccuracy,
    PointOverlapRatio,
    StrictPointOverlap,
    TopOverlapRatio,
    UnparseableRate,
    hierarchical_metrics,
    metrics_dict,
)


def _rows(*rows: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """'C' right, 'W' wrong, 'U' unparseable (flagged correct, to show parsed wins), '.' not asked."""
    correct = torch.tensor([[c in "CU" for c in r] for r in rows])
    asked = torch.tensor([[c != "." for c in r] for r in rows])
    parsed = torch.tensor([[c != "U" for c in r] for r in rows])
    return correct, asked, parsed


# s0 all right (depth 4); s1 depth 3, leaf wrong; s2 depth 4, level 3 wrong;
# s3 depth 2, level 1 unparseable.
BATCH = _rows("CCCC", "CCW.", "CCWC", "UC..")


def _value(metric, *batch) -> float:
    metric.update(*batch)
    return float(metric.compute())


def test_hand_computed_values():
    # HCA: only s0 -> 1/4.
    assert _value(HierarchicalConsistentAccuracy(), *BATCH) == 0.25
    # Leaf: s0 L4 right, s1 L3 wrong, s2 L4 right, s3 L2 right -> 3/4.
    assert _value(LeafAccuracy(), *BATCH) == 0.75
    # POR: 4/4, 2/3, 3/4, 1/2 -> (12 + 8 + 9 + 6) / 12 / 4 = 35/48.
    assert _value(PointOverlapRatio(), *BATCH) == pytest.approx(35 / 48, abs=1e-15)
    # Strict: prefixes 4/4, 2/3, 2/4, 0/2 (s3 starts unparseable) -> 13/6 / 4 = 13/24.
    assert _value(StrictPointOverlap(), *BATCH) == pytest.approx(13 / 24, abs=1e-15)
    # TOR: pairs 3/3, 1/2, 1/3, 0/1 -> 11/6 / 4 = 11/24.
    assert _value(TopOverlapRatio(), *BATCH) == pytest.approx(11 / 24, abs=1e-15)
    # hF1: right 10, predicted 12 (13 asked - 1 unparseable), asked 13 -> 2*10/(12+13) = 0.8.
    assert _value(HierarchicalF1(), *BATCH) == pytest.approx(0.8, abs=1e-15)
    # Unparseable: 1 of 13 asked questions.
    assert _value(UnparseableRate(), *BATCH) == pytest.approx(1 / 13, abs=1e-15)
    # Per level: L1 3/4, L2 4/4, L3 1/3 (s0 only), L4 2/2.
    per_level = PerLevelAccuracy(max_levels=5)
    per_level.update(*BATCH)
    got = per_level.compute().tolist()
    assert got[:4] == pytest.approx([0.75, 1.0, 1 / 3, 1.0], abs=1e-15)
    assert math.isnan(got[4])  # never asked


def test_collection_and_metrics_dict():
    metrics = hierarchical_metrics(max_levels=5)
    metrics.update(*BATCH)
    out = metrics_dict(metrics)
    assert set(out) == {
        "hca", "leaf_accuracy", "per_level_accuracy", "point_overlap", "strict_point_overlap",
        "top_overlap", "hierarchical_f1", "hierarchical_precision", "hierarchical_recall",
        "conditional_accuracy", "unparseable_rate",
    }
    assert out["hca"] == 0.25 and isinstance(out["hca"], float)
    assert out["per_level_accuracy"][4] is None  # NaN -> None for JSON
    assert out["per_level_accuracy"][:4] == pytest.approx([0.75, 1.0, 1 / 3, 1.0])


def test_valid_mask_drops_padding_copies():
    correct, asked, parsed = BATCH
    # Append a copy of s0 flagged invalid: nothing may change.
    padded = [torch.cat([t, t[:1]]) for t in (correct, asked, parsed)]
    valid = torch.tensor([True, True, True, True, False])
    a, b, c = hierarchical_metrics(4), hierarchical_metrics(4), hierarchical_metrics(4)
    a.update(*BATCH)
    b.update(*padded, valid=valid)
    c.update(*padded)  # without the mask the copy counts
    assert metrics_dict(a) == metrics_dict(b)
    assert metrics_dict(c)["hca"] == 2 / 5


def test_single_level_sample_is_left_out_of_top_overlap_only():
    batch = _rows("C..", "CW.")
    assert math.isnan(_value(TopOverlapRatio(), *_rows("C..")))  # no sample has a pair
    assert _value(TopOverlapRatio(), *batch) == 0.0  # only "CW" counts: 0 of 1 pair
    assert _value(PointOverlapRatio(), *batch) == 0.75  # (1 + 1/2) / 2: both samples count
    assert _value(HierarchicalConsistentAccuracy(), *batch) == 0.5


def test_sample_with_nothing_asked_is_left_out():
    batch = _rows("....", "CCCC")
    for metric in (HierarchicalConsistentAccuracy(), LeafAccuracy(), PointOverlapRatio(), StrictPointOverlap()):
        assert _value(metric, *batch) == 1.0
    assert _value(UnparseableRate(), *batch) == 0.0


def test_empty_metrics_are_nan():
    for metric in (HierarchicalConsistentAccuracy(), LeafAccuracy(), PointOverlapRatio(), HierarchicalF1()):
        metric.update(*[t[:0] for t in BATCH])  # e.g. a rank that got no samples
        assert math.isnan(float(metric.compute()))


def test_gaps_in_asked_levels_are_stepped_over():
    # Level 1 ignored (e.g. a single-class root); the rest forms the asked sequence.
    batch = _rows(".CCW")
    assert _value(StrictPointOverlap(), *batch) == pytest.approx(2 / 3)
    assert _value(TopOverlapRatio(), *batch) == 0.5  # (C,C) right, (C,W) not
    assert _value(LeafAccuracy(), *batch) == 0.0  # leaf = level 4


def test_correct_outside_asked_is_ignored():
    correct = torch.tensor([[True, True, True]])
    asked = torch.tensor([[True, False, False]])
    assert _value(PointOverlapRatio(), correct, asked) == 1.0
    assert _value(HierarchicalF1(), correct, asked) == 1.0
    per_level = PerLevelAccuracy(3)
    per_level.update(correct, asked)
    assert per_level.hits.tolist() == [1, 0, 0]


def test_all_unparseable_gives_zero_f1():
    assert _value(HierarchicalF1(), *_rows("UU")) == 0.0
    assert _value(UnparseableRate(), *_rows("UU")) == 1.0


def test_batches_of_different_widths_sum_exactly():
    whole = hierarchical_metrics(4)
    whole.update(*BATCH)
    split = hierarchical_metrics(4)
    split.update(*[t[:3] for t in BATCH])
    split.update(*[t[3:, :2] for t in BATCH])  # s3 alone has depth 2: a 2-wide batch
    split.update(*[t[:0] for t in BATCH])  # an empty batch changes nothing
    assert metrics_dict(split) == metrics_dict(whole)  # bit-identical, not just close


def test_ratio_sums_do_not_depend_on_order():
    rows = ["CW.", "CCW", "C.W", "WCC", "CWC", "CCC"] * 5
    a, b = PointOverlapRatio(), PointOverlapRatio()
    a.update(*_rows(*rows))
    for r in reversed(rows):
        b.update(*_rows(r))
    assert a.compute().item() == b.compute().item()


def test_bad_shapes_are_rejected():
    correct, asked, parsed = BATCH
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        HierarchicalConsistentAccuracy().update(correct, asked[:, :2])
    with pytest.raises(ValueError, match="valid"):
        LeafAccuracy().update(correct, asked, parsed, valid=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="max_levels=2"):
        PerLevelAccuracy(2).update(correct, asked)
    wide = torch.ones(1, MAX_DEPTH + 1, dtype=torch.bool)
    with pytest.raises(ValueError, match=f"at most {MAX_DEPTH}"):
        PointOverlapRatio().update(wide, wide)
