"""Bootstrap confidence intervals over images for the hierarchical metrics.

An image's levels are answered by one look at one image, so they are correlated: the unit that is
resampled is the **image** (a row of the [N, L] tensors), never a single question. The metrics
(HCA, leaf accuracy, per-level accuracy, the overlap ratios) are all ratios of sums over images,
so a bootstrap replicate is exactly "the metric on the resampled images". It is computed in one
matrix product: each image's contribution (numerator, denominator) times the replicate's image
multiplicities [N_boot, N].

Each image's contribution comes from the metric code itself (`hiertrain.core.metrics`), through
`sample_terms`: the states the torchmetrics classes accumulate for that image alone. Images with
the same (hit, asked, parsed) row contribute the same, so the metric code runs once per distinct
row, not once per image. This is the one call site to swap for a functional metrics core.

Intervals are percentile intervals (the `alpha/2` and `1 - alpha/2` quantiles of the replicates),
seeded by a private `torch.Generator`, so the same predictions give the same bytes everywhere.
Computed from the merged predictions (every rank's), they are exact under DDP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# metrics.json key -> (numerator state, denominator state) of its class in hiertrain.core.metrics
INTERVAL_METRICS: dict[str, tuple[str, str]] = {
    "hca": ("hits", "samples"),
    "leaf_accuracy": ("hits", "samples"),
    "per_level_accuracy": ("hits", "asked"),
    "point_overlap": ("ratio_sum", "samples"),
    "strict_point_overlap": ("ratio_sum", "samples"),
    "top_overlap": ("ratio_sum", "samples"),
}
DEFAULT_BOOTSTRAP = 1000
DEFAULT_CI = 0.95
DEFAULT_SEED = 0
_BLOCK = 128  # replicates per matrix product (bounds memory at N_boot x N)


@dataclass
class SampleTerms:
    """Per-image numerator and denominator of each metric: `num[name]`, `den[name]` are [N, K]
    float64 (K = 1, or L for per-level accuracy); the metric = num.sum(0) / den.sum(0)."""

    num: dict[str, Tensor]
    den: dict[str, Tensor]

    @property
    def num_samples(self) -> int:
        return next(iter(self.num.values())).shape[0]


def _metric_states(collection: Any, correct: Tensor, asked: Tensor, parsed: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """(numerator, denominator) the metric classes accumulate for this batch, per metric.

    The small local function that calls the existing metric code (`collection` =
    `hierarchical_metrics(L)`); ratio states are scaled integers (RATIO_SCALE), undone here so
    every numerator is in metric units.
    """
    from hiertrain.core.metrics import RATIO_SCALE

    collection.reset()
    collection.update(correct, asked, parsed)
    out = {}
    for name, (num_state, den_state) in INTERVAL_METRICS.items():
        metric = collection[name]
        num = getattr(metric, num_state).to(torch.float64)
        if num_state == "ratio_sum":
            num = num / RATIO_SCALE
        out[name] = (num.reshape(-1), getattr(metric, den_state).to(torch.float64).reshape(-1))
    return out


def sample_terms(correct: Tensor, asked: Tensor, parsed: Tensor | None = None) -> SampleTerms:
    """Each image's contribution to every interval metric, from the metric code (see module doc)."""
    correct, asked = correct.to(torch.bool), asked.to(torch.bool)
    parsed = torch.ones_like(asked) if parsed is None else parsed.to(torch.bool)
    n = asked.shape[0]
    # Only (hit, asked, parsed) matters to a metric: one metric call per distinct row.
    rows = torch.cat([correct & asked & parsed, asked, parsed | ~asked], dim=1)
    unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
    width = asked.shape[1]
    from hiertrain.core.metrics import hierarchical_metrics

    collection = hierarchical_metrics(width, sync_on_compute=False)
    per_unique: dict[str, tuple[list[Tensor], list[Tensor]]] = {name: ([], []) for name in INTERVAL_METRICS}
    for row in unique:
        hit, ask, par = row[:width], row[width : 2 * width], row[2 * width :]
        for name, (num, den) in _metric_states(collection, hit[None], ask[None], par[None]).items():
            per_unique[name][0].append(num)
            per_unique[name][1].append(den)
    num = {name: torch.stack(nums)[inverse] if n else torch.zeros(0, 1, dtype=torch.float64) for name, (nums, _) in per_unique.items()}
    den = {name: torch.stack(dens)[inverse] if n else torch.zeros(0, 1, dtype=torch.float64) for name, (_, dens) in per_unique.items()}
    return SampleTerms(num, den)


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
    from hiertrain.core.errors import HierError

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
) -> dict[str, Any]:
    """The metrics.json `intervals` object: settings plus `[low, high]` per metric (fractions).

    Per-level accuracy gets a list with one `[low, high]` (or None) per level; a metric with no
    counted image gets None. `n_boot == 0` returns the settings with no intervals.
    """
    check_settings(n_boot, ci)
    out: dict[str, Any] = {"method": "percentile bootstrap over images", "ci": ci, "bootstrap": n_boot, "seed": seed}
    if n_boot == 0 or asked.shape[0] == 0:
        return out
    terms = sample_terms(correct, asked, parsed)
    values = replicate_values(terms, resample_counts(terms.num_samples, n_boot, seed))
    for name, reps in values.items():
        pairs = _pairs(*percentile_interval(reps, ci))
        out[name] = pairs if name == "per_level_accuracy" else pairs[0]
    return out
