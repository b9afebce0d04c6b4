"""Open-set matching of free replies to taxonomy nodes, and the verdict rates."""

from __future__ import annotations

import pytest

from hiertrain.base.errors import HierError
from hiertrain.protocol.open_set import OpenSetMatcher, normalize_name, open_set_metrics
from hiertrain.metrics.predictions import LevelPrediction, SamplePrediction
from hiertrain.taxonomy.taxonomy import Taxonomy

TAXONOMY = Taxonomy.from_paths(
    {
        "House Sparrow": ["Passeriformes", "Passeridae", "Passer", "House Sparrow"],
        "Black-footed Albatross": ["Procellariiformes", "Diomedeidae", "Phoebastria", "Black-footed Albatross"],
        "Laysan Albatross": ["Procellariiformes", "Diomedeidae", "Phoebastria", "Laysan Albatross"],
    },
    level_names=["order", "family", "genus", "species"],
)


@pytest.fixture
def matcher() -> OpenSetMatcher:
    return OpenSetMatcher.from_taxonomy(TAXONOMY)


@pytest.mark.parametrize(
    ("reply", "level", "verdict", "node"),
    [
        ("Passeriformes", 0, "level", "Passeriformes"),
        ("It is a Passeriformes.", 0, "level", "Passeriformes"),  # surrounding text
        ("passeriforme", 0, "level", "Passeriformes"),  # plural "s" dropped on both sides
        ("PASSERIFORMES!!", 0, "level", "Passeriformes"),  # case, punctuation
        ("house sparrows", 3, "level", "House Sparrow"),  # plural
        ("Black footed albatross", 3, "level", "Black-footed Albatross"),  # hyphen
        ("This is a black-footed albatross, in the order Procellariiformes", 3, "level", "Black-footed Albatross"),
        ("Diomedeidae", 0, "other_level", None),  # a family named when the order was asked
        ("Albatross", 3, "none", None),  # part of a name is no node
        ("Laysan Albatross or Black-footed Albatross", 3, "ambiguous", None),
        ("I cannot tell.", 0, "none", None),
        ("", 2, "none", None),
    ],
)
def test_match_cases(matcher, reply, level, verdict, node):
    found = matcher.match(reply, level)
    assert (found.verdict, found.node) == (verdict, node)


def test_other_level_matches_are_listed_with_their_level(matcher):
    found = matcher.match("Procellariiformes, family Diomedeidae", 2)
    assert found.verdict == "other_level"
    assert found.to_json()["found"] == [["Procellariiformes", 1], ["Diomedeidae", 2]]


def test_synonyms_and_their_checks():
    matcher = OpenSetMatcher.from_taxonomy(TAXONOMY, synonyms={"perching birds": "Passeriformes"})
    assert matcher.match("Perching birds", 0).node == "Passeriformes"
    with pytest.raises(HierError, match="not a node"):
        OpenSetMatcher.from_taxonomy(TAXONOMY, synonyms={"x": "Nope"})


def test_normalisation_keeps_double_s_and_short_words():
    assert normalize_name("Albatross") == ("albatross",)
    assert normalize_name("Gas  Birds,") == ("gas", "bird")
    assert normalize_name("Café") == ("cafe",)


def test_verdict_rates(matcher):
    def level(n, verdict):
        return LevelPrediction(level=n, truth="x", detail={"match": verdict, "node": None, "found": [], "candidates": 2})

    preds = [
        SamplePrediction(0, [level(1, "level"), level(2, "other_level")]),
        SamplePrediction(1, [level(1, "none"), level(2, "other_level")]),
    ]
    rates = open_set_metrics(preds, 2)["open_set"]
    assert rates["asked"] == 4
    assert rates["other_level_rate"] == 0.5 and rates["none_rate"] == 0.25 and rates["level_rate"] == 0.25
    assert rates["per_level"][1]["other_level_rate"] == 1.0
    assert open_set_metrics([SamplePrediction(0, [LevelPrediction(level=1, truth="x")])], 1) is None
