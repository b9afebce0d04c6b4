"""Circular evaluation (MMBench's CircularEval): every cyclic rotation of a level's options.

A four-choice level is asked four times, its options rotated by 0..3 places (each rotation one
more suffix on the image's cached prefix, hiertrain.vlm.prefix_cache), and counts right only if
every rotation is. A model that guesses one letter is then right at most once per level, so the
metrics measure knowledge, not letter luck. The level's prediction keeps rotation 0's reply,
letter and pick (the plain question) and lists every rotation in
`detail["rotations"]` (options, reply, letter, predicted, correct), so `circular_metrics`
recomputes from a predictions file alone: the first rotation's plain accuracy and the letter
bias over every rotation asked (hiertrain.metrics.letter_bias; under rotation the truths sit on
each letter equally often, so the pick rates alone show the bias).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hiertrain.base.errors import HierError
from hiertrain.metrics.predictions import LevelPrediction, SamplePrediction
from hiertrain.protocol.prompts import LETTERS


def rotations(options: list[str]) -> list[list[str]]:
    """The cyclic rotations of `options`, rotation k starting at option k (rotation 0 = as given)."""
    return [list(options[k:]) + list(options[:k]) for k in range(len(options))]


def rotation_record(options: list[str], truth: str, reply: str | None, index: int | None) -> dict[str, Any]:
    """One rotation's answer as kept in `detail["rotations"]`."""
    predicted = None if index is None else options[index]
    return {
        "options": list(options),
        "reply": reply,
        "letter": None if index is None else LETTERS[index],
        "predicted": predicted,
        "correct": predicted == truth,
    }


def combine(level: LevelPrediction, records: list[dict[str, Any]]) -> LevelPrediction:
    """`level` (rotation 0's answer) as the circular level: right only if every rotation is."""
    if not records or records[0]["options"] != list(level.options):
        raise HierError(f"level {level.level}: rotation 0 must be the level's own options")
    level.detail = {**(level.detail or {}), "rotations": records}
    level.correct = all(r["correct"] for r in records)
    return level


def is_circular(preds: list[SamplePrediction]) -> bool:
    return any(lv.detail and "rotations" in lv.detail for p in preds for lv in p.levels)


def circular_metrics(preds: list[SamplePrediction], depth: int, ignore: frozenset[int] = frozenset()) -> dict[str, Any] | None:
    """metrics.json's `circular` block of a circular run (None otherwise): rotations asked per
    level, the plain (first-rotation) `hca` / `leaf_accuracy` / `per_level_accuracy`, and the
    `letter_bias` over every rotation asked; `ignore`: 1-based levels left out (`score --ignore-level`)."""
    if not is_circular(preds):
        return None
    from hiertrain.metrics.functional import hierarchical_scores, json_values
    from hiertrain.metrics.letter_bias import letter_bias
    from hiertrain.metrics.predictions import to_tensors

    first, questions, counts = [], [], set()
    for p in preds:
        levels = []
        for lv in p.levels:
            if lv.level in ignore:
                levels.append(dataclasses.replace(lv, asked=False))
                continue
            records = (lv.detail or {}).get("rotations") if lv.asked else None
            if records is None:
                levels.append(lv)
                continue
            counts.add(len(records))
            levels.append(dataclasses.replace(lv, correct=bool(records[0]["correct"])))
            questions += [(r["options"], lv.truth, r["letter"]) for r in records]
        first.append(dataclasses.replace(p, levels=levels))
    plain = json_values(hierarchical_scores(*to_tensors(first, depth)))
    return {
        "circular": {
            "rotations": sorted(counts),
            "first_rotation": {k: plain[k] for k in ("hca", "leaf_accuracy", "per_level_accuracy", "unparseable_rate")},
            "letter_bias": letter_bias(questions),
        }
    }
