"""The hierarchical metrics as plain functions (torchmetrics' functional form).

Each metric is an ``*_update`` that turns a batch into integer counts and a ``*_compute`` that
turns summed counts into a fraction. The classes in `hiertrain.core.metrics` keep those counts
as states (summed across DDP processes) and call these functions; callers holding every sample
at once (`hiertrain score`, a run's metrics.json) call the one-shot functions at the bottom.
One set of definitions, so a class fed batch by batch, a one-shot call and a DDP run agree
bit for bit.

Inputs are bool tensors of shape [B, ..., L]: dim 0 = samples, the last dim = levels by depth
index (a sample's missing levels are padding), any dims between = independent metrics over the
same samples (e.g. one per probe site; ``asked`` and ``parsed`` may then be [B, L] and are
broadcast). See `hiertrain.core.metrics` for what ``correct``/``asked``/``parsed``/``valid`` mean:
a level is a "hit" when asked & parsed & correct; a sample's leaf is its deepest asked level; its
asked sequence is its asked levels in depth order (unasked gaps stepped over); a sample with
nothing asked is in no denominator.

Per-sample ratios (point / strict point / top overlap) are counted as integers scaled by
``RATIO_SCALE`` = lcm(1..MAX_DEPTH), which every possible denominator divides, so sums of them
are exact. Results are float64 fractions, NaN where nothing was counted.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MAX_DEPTH = 20
RATIO_SCALE = math.lcm(*range(1, MAX_DEPTH + 1))

__all__ = [
    "MAX_DEPTH",
    "RATIO_SCALE",
    "hca_update",
    "hierarchical_consistent_accuracy",
    "hierarchical_f1",
    "hierarchical_f1_compute",
    "hierarchical_f1_update",
    "hierarchical_scores",
    "json_values",
    "leaf_accuracy",
    "leaf_accuracy_update",
    "per_level_accuracy",
    "per_level_update",
    "point_overlap_ratio",
    "point_overlap_update",
    "prepare",
    "ratio",
    "sample_ratio_compute",
    "strict_point_overlap",
    "strict_point_overlap_update",
    "top_overlap_ratio",
    "top_overlap_update",
    "unparseable_rate",
    "unparseable_update",
]


# ---------------------------------------------------------------- input


def _level_shaped(t: Tensor, correct: Tensor, name: str) -> Tensor:
    """`t` as bool in `correct`'s shape: equal shapes, or [B, L] broadcast over the middle dims."""
    t = t.to(torch.bool)
    if t.shape == correct.shape:
        return t
    if t.ndim == 2 and correct.ndim > 2 and t.shape == (correct.shape[0], correct.shape[-1]):
        return t.view(t.shape[0], *([1] * (correct.ndim - 2)), t.shape[1]).expand(correct.shape)
    raise ValueError(
        f"correct and {name} must both be [B, L] (or correct [B, ..., L] with {name} [B, L]); "
        f"got {tuple(correct.shape)} and {tuple(t.shape)}"
    )


def prepare(
    correct: Tensor, asked: Tensor, parsed: Tensor | None = None, valid: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Check shapes, drop DDP padding copies (``valid`` False); return (hit, asked, parsed).

    All three come back as bool tensors of `correct`'s shape (rows of padding removed).
    """
    correct = correct.to(torch.bool)
    if correct.ndim < 2:
        raise ValueError(f"correct must be [B, L] (or [B, ..., L]); got {tuple(correct.shape)}")
    asked = _level_shaped(asked, correct, "asked")
    if correct.shape[-1] > MAX_DEPTH:
        raise ValueError(f"at most {MAX_DEPTH} levels are supported; got {correct.shape[-1]}")
    parsed = torch.ones_like(asked) if parsed is None else _level_shaped(parsed, correct, "parsed")
    if valid is not None:
        valid = valid.to(torch.bool)
        if valid.shape != correct.shape[:1]:
            raise ValueError(f"valid must be [{correct.shape[0]}]; got {tuple(valid.shape)}")
        correct, asked, parsed = correct[valid], asked[valid], parsed[valid]
    return correct & asked & parsed, asked, parsed


# ---------------------------------------------------------------- compute helpers


def ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den in float64, NaN where den is 0 (nothing was counted)."""
    den = den.to(torch.float64)
    return torch.where(den > 0, num.to(torch.float64) / den.clamp(min=1), torch.full_like(den, math.nan))


def _scaled_sum(num: Tensor, den: Tensor) -> tuple[Tensor, Tensor]:
    """(sum over samples of num/den scaled by RATIO_SCALE, samples with den > 0); exact integers."""
    keep = den > 0
    scaled = num.to(torch.long) * RATIO_SCALE // den.to(torch.long).clamp(min=1)
    return torch.where(keep, scaled, 0).sum(0), keep.sum(0)


def sample_ratio_compute(ratio_sum: Tensor, samples: Tensor) -> Tensor:
    """Mean per-sample ratio from a scaled ratio sum (point, strict point and top overlap)."""
    return ratio(ratio_sum.to(torch.float64) / RATIO_SCALE, samples)


# ---------------------------------------------------------------- updates (integer counts)


def hca_update(hit: Tensor, asked: Tensor) -> tuple[Tensor, Tensor]:
    """(samples whose every asked level is a hit, samples with any level asked)."""
    n = asked.sum(-1)
    keep = n > 0
    return ((hit.sum(-1) == n) & keep).sum(0), keep.sum(0)


def leaf_accuracy_update(hit: Tensor, asked: Tensor) -> tuple[Tensor, Tensor]:
    """(samples whose deepest asked level is a hit, samples with any level asked)."""
    keep = asked.any(-1)
    depth_idx = torch.arange(asked.shape[-1], device=asked.device)
    leaf = torch.where(asked, depth_idx, -1).amax(-1, keepdim=True).clamp(min=0)
    return (hit.gather(-1, leaf).squeeze(-1) & keep).sum(0), keep.sum(0)


def per_level_update(hit: Tensor, asked: Tensor) -> tuple[Tensor, Tensor]:
    """(hits per level, samples asked per level), both [..., L]."""
    return hit.sum(0), asked.sum(0)


def point_overlap_update(hit: Tensor, asked: Tensor) -> tuple[Tensor, Tensor]:
    """Scaled sum of hit levels / asked levels per sample, and the samples counted."""
    return _scaled_sum(hit.sum(-1), asked.sum(-1))


def strict_point_overlap_update(hit: Tensor, asked: Tensor) -> tuple[Tensor, Tensor]:
    """Scaled sum of (longest hit prefix of the asked sequence / asked levels), and the samples."""
    wrong_so_far = torch.cumsum((asked & ~hit).to(torch.long), dim=-1)
    prefix = (asked & (wrong_so_far == 0)).sum(-1)
    return _scaled_sum(prefix, asked.sum(-1))


def top_overlap_update(hit: Tensor, asked: Tensor) -> tuple[Tensor, Tensor]:
    """Scaled sum of (consecutive hit pairs in the asked sequence / (asked - 1)), and the samples.

    A sample with a single asked level has no pair and is left out (the paper's script counts it
    as 0 instead).
    """
    # Move asked levels to the front in depth order; hits elsewhere are False, so a pair that
    # reaches past the asked sequence never counts.
    order = torch.argsort((~asked).to(torch.uint8), dim=-1, stable=True)
    seq = hit.gather(-1, order)
    pairs = (seq[..., :-1] & seq[..., 1:]).sum(-1)
    return _scaled_sum(pairs, asked.sum(-1) - 1)


def hierarchical_f1_update(hit: Tensor, asked: Tensor, parsed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(hit levels, predicted levels = asked with a parsed answer, asked levels), summed."""
    return hit.sum(0).sum(-1), (asked & parsed).sum(0).sum(-1), asked.sum(0).sum(-1)


def unparseable_update(asked: Tensor, parsed: Tensor) -> tuple[Tensor, Tensor]:
    """(asked levels whose answer could not be parsed, asked levels), summed."""
    return (asked & ~parsed).sum(0).sum(-1), asked.sum(0).sum(-1)


def hierarchical_f1_compute(hits: Tensor, predicted: Tensor, asked: Tensor) -> Tensor:
    """Micro F1 of hP = hits / predicted and hR = hits / asked; 0 when nothing is right, NaN when
    nothing was asked."""
    precision, recall = ratio(hits, predicted), ratio(hits, asked)
    f1 = 2 * precision * recall / (precision + recall)
    f1 = torch.where(hits == 0, torch.zeros_like(f1), f1)
    return torch.where(asked == 0, recall, f1)  # recall is NaN there


# ---------------------------------------------------------------- one-shot functions


def hierarchical_consistent_accuracy(
    correct: Tensor, asked: Tensor, parsed: Tensor | None = None, valid: Tensor | None = None
) -> Tensor:
    """HCA: share of samples whose every asked level is right."""
    hit, asked, _ = prepare(correct, asked, parsed, valid)
    return ratio(*hca_update(hit, asked))


def leaf_accuracy(correct: Tensor, asked: Tensor, parsed: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
    """Share of samples whose leaf (deepest asked level) is right."""
    hit, asked, _ = prepare(correct, asked, parsed, valid)
    return ratio(*leaf_accuracy_update(hit, asked))


def per_level_accuracy(
    correct: Tensor, asked: Tensor, parsed: Tensor | None = None, valid: Tensor | None = None
) -> Tensor:
    """Accuracy at each depth index over the samples asked there ([..., L]); NaN where none were."""
    hit, asked, _ = prepare(correct, asked, parsed, valid)
    return ratio(*per_level_update(hit, asked))


def point_overlap_ratio(
    correct: Tensor, asked: Tensor, parsed: Tensor | None = None, valid: Tensor | None = None
) -> Tensor:
    """POR: mean over samples of right asked levels / asked levels."""
    hit, asked, _ = prepare(correct, asked, parsed, valid)
    return sample_ratio_compute(*point_overlap_update(hit, asked))


def strict_point_overlap(
    correct: Tensor, asked: Tensor, parsed: Tensor | None = None, valid: Tensor | None = None
) -> Tensor:
    """Strict POR: mean over samples of the longest right prefix of the asked sequence / asked."""
    hit, asked, _ = prepare(correct, asked, parsed, valid)
    return sample_ratio_compute(*strict_point_overlap_update(hit, asked))


def top_overlap_ratio(
    correct: Tensor, asked: Tensor, parsed: Tensor | None = None, valid: Tensor | None = None
) -> Tensor:
    """TOR: mean over samples with 2+ asked levels of consecutive right pairs / (asked - 1)."""
    hit, asked, _ = prepare(correct, asked, parsed, valid)
    return sample_ratio_compute(*top_overlap_update(hit, asked))


def hierarchical_f1(correct: Tensor, asked: Tensor, parsed: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
    """Micro hierarchical F1 (an unparseable answer is no prediction: it lowers recall only)."""
    return hierarchical_f1_compute(*hierarchical_f1_update(*prepare(correct, asked, parsed, valid)))


def unparseable_rate(correct: Tensor, asked: Tensor, parsed: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
    """Share of asked questions whose answer could not be parsed."""
    _, asked, parsed = prepare(correct, asked, parsed, valid)
    return ratio(*unparseable_update(asked, parsed))


def hierarchical_scores(
    correct: Tensor, asked: Tensor, parsed: Tensor | None = None, valid: Tensor | None = None
) -> dict[str, Tensor]:
    """Every metric at once, under the metrics.json names (`hierarchical_metrics` computes the same
    from batches); ``per_level_accuracy`` has one entry per column of the inputs."""
    hit, asked, parsed = prepare(correct, asked, parsed, valid)
    return {
        "hca": ratio(*hca_update(hit, asked)),
        "leaf_accuracy": ratio(*leaf_accuracy_update(hit, asked)),
        "per_level_accuracy": ratio(*per_level_update(hit, asked)),
        "point_overlap": sample_ratio_compute(*point_overlap_update(hit, asked)),
        "strict_point_overlap": sample_ratio_compute(*strict_point_overlap_update(hit, asked)),
        "top_overlap": sample_ratio_compute(*top_overlap_update(hit, asked)),
        "hierarchical_f1": hierarchical_f1_compute(*hierarchical_f1_update(hit, asked, parsed)),
        "unparseable_rate": ratio(*unparseable_update(asked, parsed)),
    }


def json_values(values: dict[str, Tensor]) -> dict[str, float | list[float | None] | None]:
    """Metric tensors (a collection's `compute()` or `hierarchical_scores`) as plain JSON-ready
    values; NaN (nothing counted) becomes None. Here, not in `hiertrain.core.metrics`, so that
    `hiertrain score` never imports torchmetrics."""
    out: dict[str, float | list[float | None] | None] = {}
    for name, value in values.items():
        flat = value.detach().cpu().to(torch.float64)
        as_list = [None if math.isnan(v) else v for v in flat.flatten().tolist()]
        out[name] = as_list if flat.ndim else as_list[0]
    return out
