"""The hierarchical metrics as plain functions (torchmetrics' functional form).

Each metric is an ``*_update`` that turns a batch into integer counts and a ``*_compute`` that
turns summed counts into a fraction. The classes in `hiertrain.metrics.classes` keep those counts
as states (summed across DDP processes) and call these functions; callers holding every sample
at once (`hiertrain score`, a run's metrics.json) call the one-shot functions at the bottom.
One set of definitions, so a class fed batch by batch, a one-shot call and a DDP run agree
bit for bit.

Inputs are bool tensors of shape [B, ..., L]: dim 0 = samples, the last dim = levels by depth
index (a sample's missing levels are padding), any dims between = independent metrics over the
same samples (e.g. one per probe site; ``asked`` and ``parsed`` may then be [B, L] and are
broadcast). See `hiertrain.metrics.classes` for what ``correct``/``asked``/``parsed``/``valid`` mean:
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
    "conditional_accuracy",
    "conditional_accuracy_update",
    "hca_update",
    "hierarchical_consistent_accuracy",
    "hierarchical_f1",
    "hierarchical_f1_compute",
    "hierarchical_precision_compute",
    "hierarchical_recall_compute",
    "hierarchical_f1_update",
    "hierarchical_precision",
    "hierarchical_recall",
    "hierarchical_scores",
    "json_values",
    "leaf_accuracy",
    "leaf_accuracy_update",
    "mistake_severity_compute",
    "mistake_severity_update",
    "path_consistency_update",
    "per_level_accuracy",
    "per_level_update",
    "point_overlap_ratio",
    "point_overlap_update",
    "prepare",
    "ratio",
    "sample_ratio_compute",
    "strict_point_overlap",
    "strict_point_overlap_update",
    "taxonomy_scores",
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


def hierarchical_precision_compute(hits: Tensor, predicted: Tensor) -> Tensor:
    """hP = hits / predicted levels (Kiritchenko et al. 2006, micro, over the asked levels)."""
    return ratio(hits, predicted)


def hierarchical_recall_compute(hits: Tensor, asked: Tensor) -> Tensor:
    """hR = hits / asked levels (the true nodes of the asked levels)."""
    return ratio(hits, asked)


def _shifted(t: Tensor) -> Tensor:
    """`t` moved one level deeper: column k holds column k - 1, column 0 is False."""
    return torch.cat([torch.zeros_like(t[..., :1]), t[..., :-1]], dim=-1)


def conditional_accuracy_update(hit: Tensor, asked: Tensor) -> tuple[Tensor, Tensor]:
    """Per level k (0-based), (samples with k and k - 1 asked, k - 1 right and k right, samples with
    k and k - 1 asked and k - 1 right), both [..., L]; column 0 has no parent level (0 / 0)."""
    given = asked & _shifted(asked) & _shifted(hit)
    return (given & hit).sum(0), given.sum(0)


def _codes(t: Tensor, like: Tensor, name: str) -> Tensor:
    t = t.to(torch.long)
    if t.shape != like.shape:
        raise ValueError(f"{name} must have correct's shape {tuple(like.shape)}; got {tuple(t.shape)}")
    return t


def mistake_severity_update(
    hit: Tensor, asked: Tensor, parsed: Tensor, lca: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Counts of the wrong picks by how far from the truth they land in the taxonomy.

    ``lca`` [B, ..., L] (ints): per asked level whose pick is a node of the taxonomy at that level,
    the LCA depth = how many levels from the root the pick's path shares with the truth's path
    (`hiertrain.metrics.placement`); -1 = the pick has no place (unparseable, open-set text, not a node).
    A wrong pick at 1-based level k with LCA depth d is 2 (k - d) edges from the true node.
    Returns (LCA depth sum, distance sum, placed wrong picks, unplaced wrong picks), each [..., L]
    by level, and the severity histogram [..., L]: placed wrong picks per LCA depth 0..L-1.
    """
    lca = _codes(lca, hit, "lca")
    width = hit.shape[-1]
    level = torch.arange(1, width + 1, device=hit.device)
    wrong = asked & ~hit
    placed = wrong & parsed & (lca >= 0)
    if bool((placed & (lca >= level)).any()):
        raise ValueError("a wrong pick cannot share its own level with the truth (lca must be < its 1-based level)")
    lca_sum = torch.where(placed, lca, 0).sum(0)
    distance_sum = torch.where(placed, 2 * (level - lca), 0).sum(0)
    # one pass per depth (at most MAX_DEPTH) keeps memory at the inputs' size, unlike a one-hot
    bins = [(placed & (lca == d)).sum(0).sum(-1) for d in range(width)]
    histogram = torch.stack(bins, dim=-1) if bins else torch.zeros(placed.shape[1:], dtype=torch.long)
    return lca_sum, distance_sum, placed.sum(0), (wrong & ~placed).sum(0), histogram


def mistake_severity_compute(lca_sum: Tensor, distance_sum: Tensor, mistakes: Tensor) -> dict[str, Tensor]:
    """Mean LCA depth and tree distance of the placed wrong picks, per level and over all levels."""
    return {
        "mistake_lca_depth": ratio(lca_sum.sum(-1), mistakes.sum(-1)),
        "mistake_lca_depth_per_level": ratio(lca_sum, mistakes),
        "mistake_distance": ratio(distance_sum.sum(-1), mistakes.sum(-1)),
        "mistake_distance_per_level": ratio(distance_sum, mistakes),
    }


def path_consistency_update(asked: Tensor, parsed: Tensor, links: Tensor) -> tuple[Tensor, Tensor]:
    """(samples whose picks form a path of the taxonomy, samples with 2+ asked levels).

    ``links`` [B, ..., L] (ints, `hiertrain.metrics.placement`): at level c, bit c = the pick is a node
    of the taxonomy at that level, bit j < c = the pick's ancestor at level j is the pick at level j.
    A path: every asked pick is a node, and each one's ancestor at the previous asked level (the
    parent, unless a level in between is not asked) is the pick there. Truth is not used.
    """
    links = _codes(links, asked, "links")
    width = asked.shape[-1]
    index = torch.arange(width, device=asked.device)
    previous = _shifted_index(torch.where(asked, index, -1).cummax(-1).values)
    placed = parsed & (((links >> index) & 1) == 1)
    linked = ((links >> previous.clamp(min=0)) & 1) == 1
    fine = ~asked | (placed & ((previous < 0) | linked))
    counted = asked.sum(-1) >= 2
    return (counted & fine.all(-1)).sum(0), counted.sum(0)


def _shifted_index(t: Tensor) -> Tensor:
    """Column k holds column k - 1 of `t`, column 0 is -1 (no previous asked level)."""
    return torch.cat([torch.full_like(t[..., :1], -1), t[..., :-1]], dim=-1)


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


def hierarchical_precision(
    correct: Tensor, asked: Tensor, parsed: Tensor | None = None, valid: Tensor | None = None
) -> Tensor:
    """Micro hP: right asked levels / asked levels with a parsed answer."""
    hits, predicted, _ = hierarchical_f1_update(*prepare(correct, asked, parsed, valid))
    return hierarchical_precision_compute(hits, predicted)


def hierarchical_recall(correct: Tensor, asked: Tensor, parsed: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
    """Micro hR: right asked levels / asked levels."""
    hits, _, asked_n = hierarchical_f1_update(*prepare(correct, asked, parsed, valid))
    return hierarchical_recall_compute(hits, asked_n)


def conditional_accuracy(
    correct: Tensor, asked: Tensor, parsed: Tensor | None = None, valid: Tensor | None = None
) -> Tensor:
    """P(level k right | level k - 1 right) per level ([..., L]; NaN at level 1 and where never given)."""
    hit, asked, _ = prepare(correct, asked, parsed, valid)
    return ratio(*conditional_accuracy_update(hit, asked))


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
    hits, predicted, asked_n = hierarchical_f1_update(hit, asked, parsed)
    return {
        "hca": ratio(*hca_update(hit, asked)),
        "leaf_accuracy": ratio(*leaf_accuracy_update(hit, asked)),
        "per_level_accuracy": ratio(*per_level_update(hit, asked)),
        "point_overlap": sample_ratio_compute(*point_overlap_update(hit, asked)),
        "strict_point_overlap": sample_ratio_compute(*strict_point_overlap_update(hit, asked)),
        "top_overlap": sample_ratio_compute(*top_overlap_update(hit, asked)),
        "hierarchical_f1": hierarchical_f1_compute(hits, predicted, asked_n),
        "hierarchical_precision": hierarchical_precision_compute(hits, predicted),
        "hierarchical_recall": hierarchical_recall_compute(hits, asked_n),
        "conditional_accuracy": ratio(*conditional_accuracy_update(hit, asked)),
        "unparseable_rate": ratio(*unparseable_update(asked, parsed)),
    }


def _kept(t: Tensor, like: Tensor, valid: Tensor | None, name: str) -> Tensor:
    """A per sample x level code tensor checked against `like` [B, ..., L], padding rows dropped."""
    t = _codes(t, like, name)
    return t if valid is None else t[valid.to(torch.bool)]


def taxonomy_scores(
    correct: Tensor,
    asked: Tensor,
    parsed: Tensor | None,
    lca: Tensor,
    links: Tensor,
    valid: Tensor | None = None,
) -> dict[str, Tensor]:
    """The measures that need the taxonomy (``lca``, ``links`` from `hiertrain.metrics.placement`),
    under their metrics.json names: path consistency, mean LCA depth / tree distance of the wrong
    picks (overall and per level), the severity histogram and the wrong picks with no place."""
    hit, asked, parsed = prepare(correct, asked, parsed, valid)
    correct_b = correct.to(torch.bool)
    lca, links = _kept(lca, correct_b, valid, "lca"), _kept(links, correct_b, valid, "links")
    lca_sum, distance_sum, mistakes, unplaced, histogram = mistake_severity_update(hit, asked, parsed, lca)
    return {
        "path_consistency": ratio(*path_consistency_update(asked, parsed, links)),
        **mistake_severity_compute(lca_sum, distance_sum, mistakes),
        "mistake_severity": histogram,
        "mistakes_unplaced": unplaced.sum(-1),
    }


def json_values(values: dict[str, Tensor]) -> dict[str, float | list[float | None] | None]:
    """Metric tensors (a collection's `compute()` or `hierarchical_scores`) as plain JSON-ready
    values; NaN (nothing counted) becomes None. Here, not in `hiertrain.metrics.classes`, so that
    `hiertrain score` never imports torchmetrics."""
    out: dict[str, float | list[float | None] | None] = {}
    for name, value in values.items():
        if not value.is_floating_point():  # counts (the severity histogram) stay integers
            ints = value.detach().cpu().to(torch.long)
            out[name] = ints.flatten().tolist() if ints.ndim else int(ints)
            continue
        flat = value.detach().cpu().to(torch.float64)
        as_list = [None if math.isnan(v) else v for v in flat.flatten().tolist()]
        out[name] = as_list if flat.ndim else as_list[0]
    return out
