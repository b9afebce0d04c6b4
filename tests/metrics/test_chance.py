"""core/chance: the chance level of a question set and the rule metrics.json states for it."""

from __future__ import annotations

import pytest

from hiertrain.metrics.chance import chance_levels
from hiertrain.metrics.predictions import LevelPrediction, SamplePrediction


def _sample(i: int, options: list[list[str]], candidates: list[int] | None = None) -> SamplePrediction:
    levels = []
    for k, opts in enumerate(options):
        detail = {"candidates": candidates[k]} if candidates else None
        levels.append(LevelPrediction(level=k + 1, truth=f"t{k}", options=opts, detail=detail))
    return SamplePrediction(id=i, levels=levels)


def test_closed_set_chance_is_one_over_the_shown_options():
    chance = chance_levels([_sample(0, [["a", "b"], ["a", "b", "c", "d"]]), _sample(1, [["a", "b"], ["a", "b"]])])
    assert chance["per_level_accuracy"] == [0.5, pytest.approx(0.375)]
    assert chance["hca"] == pytest.approx((1 / 8 + 1 / 4) / 2)
    assert chance["rule"].startswith("uniform guess among the shown options;")


def test_open_set_rule_says_the_values_are_one_over_the_taxonomy_nodes():
    # issue 22 item 21: the rule said "among the shown options" while none were shown (values 1/#nodes)
    chance = chance_levels([_sample(0, [[], []], candidates=[3, 24]), _sample(1, [[], []], candidates=[3, 24])])
    assert chance["per_level_accuracy"] == [pytest.approx(1 / 3), pytest.approx(1 / 24)]
    assert chance["hca"] == pytest.approx(1 / 72)
    assert "shown options" not in chance["rule"]
    assert chance["rule"].startswith("uniform guess among the taxonomy's nodes of each asked level (open set: no options shown)")
