"""Chance level of a question set: what uniform guessing among the shown options scores.

Rule (the same for every run, read from the options each sample was shown):
- level i: mean over the samples asked at level i of 1 / #options at that level;
- HCA: mean over the samples with at least one asked level of the product over their asked
  levels of 1 / #options (the guesses are independent, so all must be right at once);
- leaf accuracy: mean over those samples of 1 / #options at their deepest asked level.
Open-set levels show no options: #options is then the number of taxonomy nodes at that level,
and `rule` says so.
"""

from __future__ import annotations

from typing import Any



def _choices(lv: Any) -> int:
    """How many answers a level offered: its options, or in an open-set run (no options shown)
    the number of taxonomy nodes at that level (`detail["candidates"]`)."""
    return len(lv.options) or int((lv.detail or {}).get("candidates") or 0)


def chance_levels(preds: list[Any], depth: int | None = None, ignore: frozenset[int] | set[int] = frozenset()) -> dict[str, Any]:
    """`{"hca", "leaf_accuracy", "per_level_accuracy": [...], "rule"}` for SamplePredictions;
    None where no sample was asked (a level, or the whole set). `ignore`: 1-based levels left
    out of scoring (`hiertrain score --ignore-level`)."""
    width = max([depth or 0] + [lv.level for p in preds for lv in p.levels])
    sums, counts = [0.0] * width, [0] * width
    hca_sum = leaf_sum = 0.0
    scored = 0
    shown = open_levels = 0  # asked levels with options shown / asked without (open set)
    for p in preds:
        asked = sorted((lv for lv in p.levels if lv.asked and lv.level not in ignore), key=lambda lv: lv.level)
        if not asked:
            continue
        scored += 1
        product = 1.0
        for lv in asked:
            if not _choices(lv):
                from hiertrain.base.errors import HierError

                raise HierError(f"sample {p.id} level {lv.level}: asked with no options recorded")
            product /= _choices(lv)
            shown += bool(lv.options)
            open_levels += not lv.options
            sums[lv.level - 1] += 1.0 / _choices(lv)
            counts[lv.level - 1] += 1
        hca_sum += product
        leaf_sum += 1.0 / _choices(asked[-1])
    return {
        "rule": chance_rule(shown, open_levels),
        "hca": hca_sum / scored if scored else None,
        "leaf_accuracy": leaf_sum / scored if scored else None,
        "per_level_accuracy": [s / c if c else None for s, c in zip(sums, counts)],
    }


RULE_TAIL = "; HCA = product over asked levels, averaged over samples"


def chance_rule(shown: int, open_levels: int) -> str:
    """metrics.json's `chance.rule`: what the numbers are, by how the levels were asked."""
    if open_levels and not shown:
        return "uniform guess among the taxonomy's nodes of each asked level (open set: no options shown)" + RULE_TAIL
    if open_levels:
        return ("uniform guess among the shown options, or among the taxonomy's nodes of the level where none "
                "were shown (open set)") + RULE_TAIL  # fmt: skip
    return "uniform guess among the shown options" + RULE_TAIL
