"""Bootstrap confidence intervals over images for the hierarchical metrics.

An image's levels are answered by one look at one image, so they are correlated: the unit that is
resampled is the **image** (a row of the [N, L] tensors), never a single question. The metrics
(HCA, leaf accuracy, per-level accuracy, the overlap ratios) are all ratios of sums over images,
so a bootstrap replicate is exactly "the metric on the resampled images". It is computed in one
matrix product: each image's contribution (numerator, denominator) times the replicate's image
multiplicities [N_boot, N].

Each image's contribution comes from the metric code itself, the functional core
(`hiertrain.metrics.functional`, which the torchmetrics classes also call), through `sample_terms`:
the integer states that image alone would add.

Memory stays bounded at any N: an image's terms depend only on its (hit, asked) rows, so images
are grouped into their few distinct patterns; each block of replicates draws the same seeded
indices as the dense form (`resample_counts`, one `torch.randint` stream read in row blocks) and
counts how often each pattern was drawn. The replicate sums are then exact integers (ratio
metrics as RATIO_SCALE-scaled integers), divided once; the dense matrix product
(`replicate_values`, kept for `hiertrain.metrics.paired` and as the reference in the tests) adds
the same terms in floating point.

Intervals are percentile intervals (the `alpha/2` and `1 - alpha/2` quantiles of the replicates),
seeded by a private `torch.Generator`, so the same predictions give the same bytes everywhere.
Computed from the merged predictions (every rank's), they are exact under DDP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor

# metrics.json keys that get an interval (the overlap ratios are means of per-sample ratios); the
# taxonomy measures only when the placement codes are given
INTERVAL_METRICS = (
    "hca", "leaf_accuracy", "per_level_accuracy", "point_overlap", "strict_point_overlap", "top_overlap",
    "hierarchical_precision", "hierarchical_recall", "conditional_accuracy",
)
TAXONOMY_INTERVAL_METRICS = (
    "path_consistency", "mistake_lca_depth", "mistake_lca_depth_per_level", "mistake_distance", "mistake_distance_per_level",
)
RATIO_METRICS = ("point_overlap", "strict_point_overlap", "top_overlap")
# metrics with one value per level (a list of intervals)
PER_LEVEL_METRICS = ("per_level_accuracy", "conditional_accuracy", "mistake_lca_depth_per_level", "mistake_distance_per_level")
DEFAULT_BOOTSTRAP = 1000
DEFAULT_CI = 0.95
DEFAULT_SEED = 0
_BLOCK = 128  # replicates per matrix product (bounds memory at N_boot x N)
_DRAWS = 1 << 24  # indices drawn per block of the pattern path (int32: 64 MiB, and as much gathered)


@dataclass
class SampleTerms:
    """Per-image numerator and denominator of each metric: `num[name]`, `den[name]` are [N, K]
    float64 (K = 1, or L for per-level accuracy); the metric = num.sum(0) / den.sum(0)."""

    num: dict[str, Tensor]
    den: dict[str, Tensor]

    @property
    def num_samples(self) -> int:
        return next(iter(self.num.values())).shape[0]


def sample_terms(correct: Tensor, asked: Tensor, parsed: Tensor | None = None) -> SampleTerms:
    """Each image's contribution to every interval metric, from the functional metrics core.

    The core's updates sum over the batch dim and treat any middle dims as independent metrics,
    so the N images as one batch of shape [1, N, L] give N per-image (numerator, denominator)
    pairs in one call per metric; ratio states are scaled integers (RATIO_SCALE), undone here.
    """
    from hiertrain.metrics import functional as F

    hit, asked, parsed = F.prepare(correct, asked, parsed)
    dense = ("hca", "leaf_accuracy", "per_level_accuracy", "point_overlap", "strict_point_overlap", "top_overlap")
    states = {name: state for name, state in _states(hit, asked, parsed).items() if name in dense}  # the core's updates, once
    num, den = {}, {}
    for name, (numerator, denominator) in states.items():
        numerator = numerator.to(torch.float64)
        if name in RATIO_METRICS:
            numerator = numerator / F.RATIO_SCALE
        # [N] (one value per image) -> [N, 1]; per-level accuracy is already [N, L]
        num[name] = numerator if numerator.ndim == 2 else numerator.unsqueeze(-1)
        den[name] = denominator.to(torch.float64) if denominator.ndim == 2 else denominator.to(torch.float64).unsqueeze(-1)
    return SampleTerms(num, den)


def _row_keys(
    correct: Tensor, asked: Tensor, parsed: Tensor | None, lca: Tensor | None = None, links: Tensor | None = None
) -> tuple[Tensor | None, ...]:
    """(hit, asked, parsed, lca, links, key): `key` [N] int64 tells images apart exactly by their rows
    (hit, asked, parsed and, when given, the placement codes of `hiertrain.metrics.placement`)."""
    from hiertrain.metrics import functional as F

    hit, asked, parsed = F.prepare(correct, asked, parsed)
    columns = [hit, asked, parsed] + [c for c in (lca, links) if c is not None]
    rows = torch.cat([c.to(torch.long) for c in columns], dim=1)
    if rows.shape[0] == 0:
        return hit, asked, parsed, lca, links, torch.zeros(0, dtype=torch.long)
    _, key = torch.unique(rows, dim=0, return_inverse=True)
    return hit, asked, parsed, lca, links, key


def _states(
    hit: Tensor, asked: Tensor, parsed: Tensor, lca: Tensor | None = None, links: Tensor | None = None
) -> dict[str, tuple[Tensor, Tensor]]:
    """{metric: (numerators, denominators)} [U, K] int64 of U images: the functional core's integer
    updates with the images as independent metrics ([1, U, L]); ratio numerators RATIO_SCALE-scaled.
    The taxonomy measures (path consistency, mean LCA depth / tree distance of the wrong picks) only
    when the placement codes are given."""
    from hiertrain.metrics import functional as F

    h, a, p = hit[None], asked[None], parsed[None]
    hits, predicted, asked_n = F.hierarchical_f1_update(h, a, p)
    raw = {
        "hca": F.hca_update(h, a),
        "leaf_accuracy": F.leaf_accuracy_update(h, a),
        "per_level_accuracy": F.per_level_update(h, a),
        "point_overlap": F.point_overlap_update(h, a),
        "strict_point_overlap": F.strict_point_overlap_update(h, a),
        "top_overlap": F.top_overlap_update(h, a),
        "hierarchical_precision": (hits, predicted),
        "hierarchical_recall": (hits, asked_n),
        "conditional_accuracy": F.conditional_accuracy_update(h, a),
    }
    if lca is not None and links is not None:
        lca_sum, distance_sum, mistakes, _, _ = F.mistake_severity_update(h, a, p, lca[None])
        raw.update(
            path_consistency=F.path_consistency_update(a, p, links[None]),
            mistake_lca_depth=(lca_sum.sum(-1), mistakes.sum(-1)),
            mistake_lca_depth_per_level=(lca_sum, mistakes),
            mistake_distance=(distance_sum.sum(-1), mistakes.sum(-1)),
            mistake_distance_per_level=(distance_sum, mistakes),
        )
    states = {}
    for name, (num, den) in raw.items():
        num, den = num.to(torch.long), den.to(torch.long)
        states[name] = (num if num.ndim == 2 else num.unsqueeze(-1), den if den.ndim == 2 else den.unsqueeze(-1))
    return states


def joint_patterns(runs: list[tuple[Tensor | None, ...]]) -> tuple[Tensor, list[dict[str, tuple[Tensor, Tensor]]]]:
    """(pattern of each image [N] int64, per run its `_states` per pattern [U, K]).

    A run is (correct, asked, parsed) or (correct, asked, parsed, lca, links). An image's terms
    depend only on its rows, in every run: images with the same rows in all runs form one pattern
    (a handful for a few levels), so a replicate needs only how many times each pattern was drawn.
    """
    prepared = [_row_keys(*run) for run in runs]
    joint: Tensor | None = None
    for *_, key in prepared:
        unique, inverse = torch.unique(key, return_inverse=True)
        joint = inverse if joint is None else joint * unique.numel() + inverse
    assert joint is not None
    _, inverse = torch.unique(joint, return_inverse=True)
    n = inverse.numel()
    first = torch.full((int(inverse.max()) + 1 if n else 0,), n, dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(n), reduce="amin"
    )
    return inverse, [_states(*(None if t is None else t[first] for t in row[:5])) for row in prepared]


def pattern_values(states: dict[str, tuple[Tensor, Tensor]], counts: Tensor) -> dict[str, Tensor]:
    """Each metric on each row of pattern multiplicities `counts` [R, U] (int64): [R, K], NaN where
    nothing was counted. Sums are exact integers, then one correctly rounded division."""
    from hiertrain.metrics.functional import RATIO_SCALE

    out = {}
    for name, (num, den) in states.items():
        num_sum, den_sum = counts @ num, counts @ den  # exact int64 sums
        scale = RATIO_SCALE if name in RATIO_METRICS else 1
        # both sides are exact in float64 (below 2**53)
        den_f = (den_sum * scale).to(torch.float64)
        out[name] = torch.where(den_sum > 0, num_sum.to(torch.float64) / den_f.clamp(min=1), torch.full_like(den_f, float("nan")))
    return out


def pattern_replicates(inverse: Tensor, n_boot: int, seed: int) -> "Iterator[Tensor]":
    """Blocks [rows, U] of pattern multiplicities, replicate by replicate: the same seeded indices
    as `resample_counts(N, n_boot, seed)` (one `torch.randint` stream read in blocks), in memory
    bounded by `_DRAWS`."""
    n, patterns = inverse.numel(), int(inverse.max()) + 1
    inverse32 = inverse.to(torch.int32)
    gen = torch.Generator().manual_seed(seed)
    block = max(1, min(n_boot, _DRAWS // n))
    for start in range(0, n_boot, block):
        rows = min(block, n_boot - start)
        indices = torch.randint(n, (rows * n,), generator=gen, dtype=torch.int32)  # the dense form's draws, in order
        drawn = torch.index_select(inverse32, 0, indices).view(rows, n)  # index_select: ~8x faster than [] here
        del indices
        drawn += (torch.arange(rows, dtype=torch.int32) * patterns).unsqueeze(1)
        yield torch.bincount(drawn.view(-1), minlength=rows * patterns).view(rows, patterns)


def pattern_replicate_values(
    correct: Tensor,
    asked: Tensor,
    parsed: Tensor | None,
    n_boot: int,
    seed: int,
    lca: Tensor | None = None,
    links: Tensor | None = None,
) -> dict[str, Tensor]:
    """Each metric on each replicate [n_boot, K] (NaN where nothing was counted), drawing the same
    indices as `resample_counts(N, n_boot, seed)`, in memory bounded by `_DRAWS`."""
    inverse, (states,) = joint_patterns([(correct, asked, parsed, lca, links)])
    parts = [pattern_values(states, counts) for counts in pattern_replicates(inverse, n_boot, seed)]
    return {name: torch.cat([p[name] for p in parts]) for name in states}


def resample_counts(n: int, n_boot: int, seed: int) -> Tensor:
    """[n_boot, n] multiplicities of each image in each replicate (float64), from seeded indices."""
    gen = torch.Generator().manual_seed(seed)
    indices = torch.randint(n, (n_boot, n), generator=gen)
    offsets = torch.arange(n_boot).unsqueeze(1) * n
    return torch.bincount((indices + offsets).reshape(-1), minlength=n_boot * n).reshape(n_boot, n).to(torch.float64)


def replicate_values(terms: SampleTerms, counts: Tensor) -> dict[str, Tensor]:
    """Each metric on each replicate: [n_boot, K]; NaN where a replicate counted nothing."""
    out: dict[str, list[Tensor]] = {name: [] for name in terms.num}
    for start in range(0, counts.shape[0], _BLOCK):
        block = counts[start : start + _BLOCK]
        for name in terms.num:
            num, den = block @ terms.num[name], block @ terms.den[name]
            out[name].append(torch.where(den > 0, num / den.clamp(min=1e-300), torch.full_like(den, float("nan"))))
    return {name: torch.cat(parts) for name, parts in out.items()}


def percentile_interval(values: Tensor, ci: float) -> tuple[Tensor, Tensor]:
    """(low, high) quantiles of replicate values [n_boot, K] over replicates, ignoring NaN."""
    alpha = 1.0 - ci
    q = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)
    bounds = torch.nanquantile(values, q, dim=0)
    return bounds[0], bounds[1]


def check_settings(n_boot: int, ci: float) -> None:
    """HierError for a replicate count or level that makes no interval."""
    from hiertrain.base.errors import HierError

    if n_boot < 0:
        raise HierError(f"--bootstrap must be >= 0 (0 = no intervals); got {n_boot}")
    if not 0 < ci < 1:
        raise HierError(f"--ci must be between 0 and 1 (e.g. 0.95); got {ci}")


def _pairs(low: Tensor, high: Tensor) -> list[list[float] | None]:
    out: list[list[float] | None] = []
    for lo, hi in zip(low.tolist(), high.tolist()):
        out.append(None if lo != lo or hi != hi else [lo, hi])  # NaN: nothing counted
    return out


def bootstrap_intervals(
    correct: Tensor,
    asked: Tensor,
    parsed: Tensor | None = None,
    n_boot: int = DEFAULT_BOOTSTRAP,
    ci: float = DEFAULT_CI,
    seed: int = DEFAULT_SEED,
    lca: Tensor | None = None,
    links: Tensor | None = None,
) -> dict[str, Any]:
    """The metrics.json `intervals` object: settings plus `[low, high]` per metric (fractions; mean
    LCA depth and tree distance in levels / edges).

    A per-level metric gets a list with one `[low, high]` (or None) per level; a metric with no
    counted image gets None. `n_boot == 0` returns the settings with no intervals. With the
    placement codes (`lca`, `links`) the taxonomy measures get intervals too.
    """
    check_settings(n_boot, ci)
    out: dict[str, Any] = {"method": "percentile bootstrap over images", "ci": ci, "bootstrap": n_boot, "seed": seed}
    if n_boot == 0 or asked.shape[0] == 0:
        return out
    values = pattern_replicate_values(correct, asked, parsed, n_boot, seed, lca, links)
    for name, reps in values.items():
        pairs = _pairs(*percentile_interval(reps, ci))
        out[name] = pairs if name in PER_LEVEL_METRICS else pairs[0]
    return out
