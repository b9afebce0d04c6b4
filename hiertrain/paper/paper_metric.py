"""The paper's scoring (its utils/metric.py), for `hiertrain score --protocol paper`.

hiertrain's own metrics (hiertrain.metrics.classes) count what was asked; the paper's script scores
result records its own way, and reproducing its numbers needs its rules:
- paths are read from `ground_truth_levelN` / `predicted_levelN` starting at level 2 (level 1, the
  root, is dropped) unless `cub` (CUB-200's level 1 is the order, a real question), walking up
  while the key exists and leaving out None values; a sample is kept when both paths are non-empty;
- in text mode its scripts store the label as the leaf's answer, so the leaf counts as correct;
- comparisons are case-insensitive on the option text ("Unknown"/"Error" = wrong);
- HCA: the whole predicted path equals the true path; POR: matching positions / true length;
  strict POR: longest matching prefix / true length; TOR: matching consecutive pairs /
  (true length - 1), 0 for a one-level path; LNA: the last elements match.
All are means over the kept samples (returned as fractions; the script prints percentages).
"""

from __future__ import annotations

from typing import Any

from hiertrain.base.errors import HierError

UNPARSED = ("Unknown", "Error")


def _walk(item: dict[str, Any], prefix: str, start: int) -> list[Any]:
    path, level = [], start
    while f"{prefix}{level}" in item:
        value = item[f"{prefix}{level}"]
        if value is not None:
            path.append(value)
        level += 1
    return path


def paper_paths(items: list[dict[str, Any]], cub: bool = False) -> tuple[list[list[str]], list[list[str]]]:
    """(true paths, predicted paths) of the kept samples, as the paper's extraction builds them."""
    start = 1 if cub else 2
    truths, preds = [], []
    for item in items:
        truth, pred = _walk(item, "ground_truth_level", start), _walk(item, "predicted_level", start)
        if truth and pred:
            truths.append(truth)
            preds.append(pred)
    return truths, preds


def _lower(path: list[Any]) -> list[Any]:
    return [p.lower() if isinstance(p, str) else p for p in path]


def paper_scores(items: list[dict[str, Any]], cub: bool = False, source: str = "<memory>") -> dict[str, Any]:
    """HCA, POR, strict POR, TOR, LNA (fractions), per-position accuracy and counts."""
    truths, preds = paper_paths(items, cub)
    if not truths:
        raise HierError(f"{source}: no sample has a level to score under the paper's protocol (level 1 dropped: pass --cub to keep it)")
    sums = {"hca": 0.0, "point_overlap": 0.0, "strict_point_overlap": 0.0, "top_overlap": 0.0, "leaf_accuracy": 0.0}
    depth = max(max(len(t) for t in truths), max(len(p) for p in preds))
    level_total, level_correct = [0] * depth, [0] * depth
    unparsed = scored = 0
    for truth_raw, pred_raw in zip(truths, preds):
        truth, pred = _lower(truth_raw), _lower(pred_raw)
        matches = [p == t for p, t in zip(pred, truth)]
        prefix = next((i for i, m in enumerate(matches) if not m), len(matches))
        pairs = sum(1 for j in range(len(truth) - 1) if j + 1 < len(pred) and matches[j] and matches[j + 1])
        sums["hca"] += pred == truth
        sums["point_overlap"] += sum(matches) / len(truth)
        sums["strict_point_overlap"] += prefix / len(truth)
        sums["top_overlap"] += pairs / (len(truth) - 1) if len(truth) > 1 else 0.0
        sums["leaf_accuracy"] += (pred_raw[-1] or "").lower() == (truth_raw[-1] or "").lower()
        for j in range(len(truth)):
            level_total[j] += 1
            level_correct[j] += j < len(pred) and pred[j] == truth[j]
        unparsed += sum(1 for p in pred_raw if p in UNPARSED)
        scored += len(pred_raw)
    n = len(truths)
    return {
        **{key: value / n for key, value in sums.items()},
        "per_level_accuracy": [c / t if t else None for c, t in zip(level_correct, level_total)],
        "level_asked": level_total,
        "unparseable_rate": unparsed / scored if scored else None,
        "hierarchical_f1": None,  # computed but not reported by the paper's script
        "num_scored": n,
        "first_level": 1 if cub else 2,
    }
