"""Mistake severity and path consistency against a hand-worked toy taxonomy (docs/evaluation.md,
"Mistake severity and consistency")."""

from __future__ import annotations

import pytest
import torch

from hiertrain.metrics import functional as F
from hiertrain.base.errors import HierError
from hiertrain.metrics.classes import metrics_dict, taxonomy_metrics
from hiertrain.metrics.placement import TaxonomyPlacer, placement_tensors
from hiertrain.metrics.predictions import to_tensors
from severity_toy import HAND, PREDS, TOY, sample


def test_codes_by_hand():
    lca, links = placement_tensors(PREDS, TOY)
    assert lca.dtype == torch.int8 and links.dtype == torch.int32
    assert lca.tolist() == [[1, 2, 2], [0, 1, 1], [1, 2, 3], [1, -1, 1], [0, 0, 0], [1, -1, 3]]
    # bit c: the pick at c is a node; bit j < c: its ancestor at j is the pick at j
    assert links.tolist()[0] == [0b001, 0b011, 0b111]
    assert links.tolist()[1] == [0b001, 0b010, 0b110]  # A2 not under B; c under A2, not under B
    assert links.tolist()[3] == [0b001, 0, 0b101]  # a under A; level 2 has no pick
    assert links.tolist()[5] == [0b001, 0, 0b101]


def test_metrics_by_hand():
    correct, asked, parsed = to_tensors(PREDS)
    lca, links = placement_tensors(PREDS, TOY)
    got = F.json_values(F.taxonomy_scores(correct, asked, parsed, lca, links))
    assert got == HAND  # every value is a dyadic fraction: exact
    assert isinstance(got["mistake_severity"][0], int) and isinstance(got["mistakes_unplaced"], int)
    # the classes, batch by batch, equal the one-shot functions
    collection = taxonomy_metrics(3)
    for part in (slice(0, 4), slice(4, 6)):
        collection.update(correct[part], asked[part], parsed[part], lca=lca[part], links=links[part])
    assert metrics_dict(collection) == got


def test_precision_recall_conditional_by_hand():
    correct, asked, parsed = to_tensors(PREDS)
    got = F.json_values(F.hierarchical_scores(correct, asked, parsed))
    # right levels: s0 2, s2 3, s3 1, s5 2 = 8; asked 18; predicted 17 (s3 level 2 unparseable)
    assert got["hierarchical_precision"] == pytest.approx(8 / 17, abs=1e-15)
    assert got["hierarchical_recall"] == pytest.approx(8 / 18, abs=1e-15)
    p, r = got["hierarchical_precision"], got["hierarchical_recall"]
    assert got["hierarchical_f1"] == pytest.approx(2 * p * r / (p + r), abs=1e-15) == pytest.approx(16 / 35)
    # level 1 right: s0 s2 s3 s5, of which level 2 right: s0 s2 -> 1/2; level 2 right: s0 s2, level 3: s2 -> 1/2
    assert got["conditional_accuracy"] == [None, 0.5, 0.5]


def test_path_consistency_steps_over_an_unasked_level():
    # s1's middle level unasked: B then c; c's ancestor at level 1 is A -> still not a path;
    # s4's: A then a -> a path. Samples with one asked level are in no denominator.
    preds = [sample(1, "a", ["B", "A2", "c"]), sample(4, "d", ["A", "A1", "a"]), sample(6, "a", ["B", "A1", "a"])]
    for p in preds:
        p.levels[1].asked = False
    preds[2].levels[2].asked = False  # only level 1 left
    correct, asked, parsed = to_tensors(preds)
    lca, links = placement_tensors(preds, TOY)
    got = F.json_values(F.taxonomy_scores(correct, asked, parsed, lca, links))
    assert got["path_consistency"] == 0.5


def test_valid_mask_drops_padding_copies():
    correct, asked, parsed = to_tensors(PREDS + [PREDS[1]])
    lca, links = placement_tensors(PREDS + [PREDS[1]], TOY)
    valid = torch.tensor([True] * 6 + [False])
    assert F.json_values(F.taxonomy_scores(correct, asked, parsed, lca, links, valid)) == HAND


def test_truth_outside_the_taxonomy_is_one_line_error():
    bad = sample(9, "a", ["A", "A1", "a"])
    bad.levels[1].truth = "A9"
    with pytest.raises(HierError, match=r"sample 9 level 2: truth 'A9' is not a level-2 node") as err:
        placement_tensors([bad], TOY)
    assert "\n" not in str(err.value)


def test_pick_marked_against_the_taxonomy_is_an_error():
    bad = sample(3, "a", ["A", "A1", "a"])
    bad.levels[2].correct = False
    with pytest.raises(HierError, match="marked wrong but is the truth's node"):
        TaxonomyPlacer(TOY).codes(3, bad.levels)
