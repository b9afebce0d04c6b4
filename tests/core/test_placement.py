"""Mistake severity and path consistency against a hand-worked toy taxonomy (docs/evaluation.md,
"Mistake severity and consistency")."""

from __future__ import annotations

import pytest
import torch

from hiertrain.core import functional as F
from hiertrain.core.errors import HierError
from hiertrain.core.metrics import metrics_dict, taxonomy_metrics
from hiertrain.core.placement import TaxonomyPlacer, placement_tensors
from hiertrain.core.predictions import LevelPrediction, SamplePrediction, to_tensors
from hiertrain.core.taxonomy import Taxonomy

# Level 1: A, B.  A -> A1, A2;  B -> B1.  A1 -> a, b;  A2 -> c;  B1 -> d.
TOY = Taxonomy.from_paths({"a": ("A", "A1", "a"), "b": ("A", "A1", "b"), "c": ("A", "A2", "c"), "d": ("B", "B1", "d")})
LEVELS = [["A", "B"], ["A1", "A2", "B1"], ["a", "b", "c", "d"]]
PATHS = {"a": ("A", "A1", "a"), "b": ("A", "A1", "b"), "c": ("A", "A2", "c"), "d": ("B", "B1", "d")}


def sample(sid: int, leaf: str, picks: list[str | None]) -> SamplePrediction:
    """`picks[k]` = the option chosen at level k + 1 (None = unparseable)."""
    levels = []
    for k, (truth, pick) in enumerate(zip(PATHS[leaf], picks)):
        options = LEVELS[k] + (["zebra"] if pick == "zebra" else [])
        levels.append(
            LevelPrediction(
                level=k + 1, truth=truth, options=options, letter=None if pick is None else "A",
                predicted=pick, correct=pick == truth,
            )
        )
    return SamplePrediction(id=sid, levels=levels, label=leaf)


# truth path          picks                 wrong picks: (level, LCA depth, tree distance)
# s0 A A1 a           A  A1 b               (3, 2, 2)                          path: yes
# s1 A A1 a           B  A2 c               (1, 0, 2) (2, 1, 2) (3, 1, 4)      path: no (A2 is under A)
# s2 B B1 d           B  B1 d               none                               path: yes
# s3 A A2 c           A  ?  a               level 2 unparseable; (3, 1, 4)     path: no (a pick missing)
# s4 B B1 d           A  A1 a               (1, 0, 2) (2, 0, 4) (3, 0, 6)      path: yes (wrong, but a path)
# s5 A A1 b           A  zebra b            level 2 not a node (unplaced)      path: no
PREDS = [
    sample(0, "a", ["A", "A1", "b"]),
    sample(1, "a", ["B", "A2", "c"]),
    sample(2, "d", ["B", "B1", "d"]),
    sample(3, "c", ["A", None, "a"]),
    sample(4, "d", ["A", "A1", "a"]),
    sample(5, "b", ["A", "zebra", "b"]),
]
HAND = {
    # per level: L1 LCA 0, 0 -> 0, distances 2, 2 -> 2; L2 LCA 1, 0 -> 1/2, distances 2, 4 -> 3;
    # L3 LCA 2, 1, 1, 0 -> 1, distances 2, 4, 4, 6 -> 4. Overall: 5 / 8 and 26 / 8.
    "mistake_lca_depth": 5 / 8,
    "mistake_lca_depth_per_level": [0.0, 0.5, 1.0],
    "mistake_distance": 26 / 8,
    "mistake_distance_per_level": [2.0, 3.0, 4.0],
    "mistake_severity": [4, 3, 1],  # wrong placed picks at LCA depth 0, 1, 2
    "mistakes_unplaced": 2,  # s3 level 2 (unparseable), s5 level 2 ("zebra")
    "path_consistency": 0.5,  # s0, s2, s4 of 6
}


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
