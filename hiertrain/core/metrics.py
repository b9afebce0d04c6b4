"""Hierarchical classification metrics as torchmetrics, exact under DDP.

Every metric takes the same per-sample, per-level boolean tensors of shape [B, L]
(L = levels in the batch, by depth index; a sample's missing levels are padding):

- ``asked[b, i]``: level i exists in sample b's path and was asked;
- ``correct[b, i]``: the answer was right (only read where asked);
- ``parsed[b, i]``: False = unparseable answer, counted wrong whatever ``correct`` says;
- ``valid[b]``: False = a DDP padding copy (see ``hiertrain.datamodules.sampling``); such
  rows are dropped before any state changes, so no sample is counted twice.

A level counts as right ("hit") when asked & parsed & correct. A sample's leaf is its deepest
asked level; its "asked sequence" is its asked levels in depth order (gaps, e.g. an ignored
level, are stepped over). A sample with nothing asked is left out of every denominator.

All states are integer counts summed across processes, so a 2-process run gives bit-identical
results to a 1-process run. Per-sample ratios (point overlap, strict point overlap, top
overlap) are accumulated as integers scaled by ``RATIO_SCALE`` = lcm(1..MAX_DEPTH), which every
possible denominator divides. Results are fractions in [0, 1]; NaN where nothing was counted.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

MAX_DEPTH = 20
RATIO_SCALE = math.lcm(*range(1, MAX_DEPTH + 1))

__all__ = [
    "HierarchicalConsistentAccuracy",
    "HierarchicalF1",
    "LeafAccuracy",
    "PerLevelAccuracy",
    "PointOverlapRatio",
    "StrictPointOverlap",
    "TopOverlapRatio",
    "UnparseableRate",
    "hierarchical_metrics",
    "metrics_dict",
]


def _prepare(
    correct: Tensor, asked: Tensor, parsed: Tensor | None, valid: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Check shapes, drop padding copies; return (hit, asked, parsed) as bool [B', L]."""
    correct, asked = correct.to(torch.bool), asked.to(torch.bool)
    if correct.ndim != 2 or correct.shape != asked.shape:
        raise ValueError(f"correct and asked must both be [B, L]; got {tuple(correct.shape)} and {tuple(asked.shape)}")
    if correct.shape[1] > MAX_DEPTH:
        raise ValueError(f"at most {MAX_DEPTH} levels are supported; got {correct.shape[1]}")
    parsed = torch.ones_like(asked) if parsed is None else parsed.to(torch.bool)
    if parsed.shape != asked.shape:
        raise ValueError(f"parsed must be {tuple(asked.shape)}; got {tuple(parsed.shape)}")
    if valid is not None:
        valid = valid.to(torch.bool)
        if valid.shape != asked.shape[:1]:
            raise ValueError(f"valid must be [{asked.shape[0]}]; got {tuple(valid.shape)}")
        correct, asked, parsed = correct[valid], asked[valid], parsed[valid]
    hit = correct & asked & parsed
    return hit, asked, parsed


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den in float64, NaN when den is 0 (nothing was counted)."""
    den = den.to(torch.float64)
    return torch.where(den > 0, num.to(torch.float64) / den.clamp(min=1), torch.full_like(den, math.nan))


def _scaled(num: Tensor, den: Tensor) -> Tensor:
    """Per-sample num/den as an exact integer: num * RATIO_SCALE // den (den divides the scale)."""
    return num.to(torch.long) * RATIO_SCALE // den.to(torch.long).clamp(min=1)


class _HierMetric(Metric):
    """Common flags; subclasses declare their states and implement `_update` on (hit, asked, parsed)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def update(
        self, correct: Tensor, asked: Tensor, parsed: Tensor | None = None, valid: Tensor | None = None
    ) -> None:
        self._update(*_prepare(correct, asked, parsed, valid))

    def _update(self, hit: Tensor, asked: Tensor, parsed: Tensor) -> None:
        raise NotImplementedError


class _SampleRatio(_HierMetric):
    """Mean over samples of a per-sample ratio, kept as an exact scaled integer sum."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("ratio_sum", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("samples", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def compute(self) -> Tensor:
        return _ratio(self.ratio_sum.to(torch.float64) / RATIO_SCALE, self.samples)

    def _add(self, num: Tensor, den: Tensor) -> None:
        keep = den > 0
        self.ratio_sum += _scaled(num[keep], den[keep]).sum()
        self.samples += keep.sum()


class HierarchicalConsistentAccuracy(_HierMetric):
    """HCA: share of samples whose every asked level is right."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("hits", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("samples", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _update(self, hit: Tensor, asked: Tensor, parsed: Tensor) -> None:
        n = asked.sum(1)
        keep = n > 0
        self.hits += ((hit.sum(1) == n) & keep).sum()
        self.samples += keep.sum()

    def compute(self) -> Tensor:
        return _ratio(self.hits, self.samples)


class LeafAccuracy(_HierMetric):
    """Share of samples whose leaf (deepest asked level) is right."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("hits", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("samples", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _update(self, hit: Tensor, asked: Tensor, parsed: Tensor) -> None:
        keep = asked.any(1)
        depth_idx = torch.arange(asked.shape[1], device=asked.device)
        leaf = torch.where(asked, depth_idx, -1).amax(1).clamp(min=0)  # deepest asked index
        self.hits += (hit.gather(1, leaf.unsqueeze(1)).squeeze(1) & keep).sum()
        self.samples += keep.sum()

    def compute(self) -> Tensor:
        return _ratio(self.hits, self.samples)


class PerLevelAccuracy(_HierMetric):
    """Accuracy at each depth index 0..max_levels-1 over the samples asked there; NaN if none were."""

    def __init__(self, max_levels: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 1 <= max_levels <= MAX_DEPTH:
            raise ValueError(f"max_levels must be in 1..{MAX_DEPTH}; got {max_levels}")
        self.max_levels = max_levels
        self.add_state("hits", torch.zeros(max_levels, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("asked", torch.zeros(max_levels, dtype=torch.long), dist_reduce_fx="sum")

    def _update(self, hit: Tensor, asked: Tensor, parsed: Tensor) -> None:
        width = asked.shape[1]
        if width > self.max_levels:
            raise ValueError(f"batch has {width} levels but PerLevelAccuracy(max_levels={self.max_levels})")
        self.hits[:width] += hit.sum(0)
        self.asked[:width] += asked.sum(0)

    def compute(self) -> Tensor:
        return _ratio(self.hits, self.asked)


class PointOverlapRatio(_SampleRatio):
    """POR: mean over samples of (right asked levels / asked levels)."""

    def _update(self, hit: Tensor, asked: Tensor, parsed: Tensor) -> None:
        self._add(hit.sum(1), asked.sum(1))


class StrictPointOverlap(_SampleRatio):
    """Strict POR: mean over samples of (longest right prefix of the asked sequence / asked levels).

    The prefix starts at the sample's shallowest asked level and stops at its first wrong one.
    """

    def _update(self, hit: Tensor, asked: Tensor, parsed: Tensor) -> None:
        wrong_so_far = torch.cumsum((asked & ~hit).to(torch.long), dim=1)
        prefix = (asked & (wrong_so_far == 0)).sum(1)
        self._add(prefix, asked.sum(1))


class TopOverlapRatio(_SampleRatio):
    """TOR: mean over samples of (consecutive right pairs in the asked sequence / (asked - 1)).

    A sample with a single asked level has no pair: it is left out of this metric's denominator
    (the paper's script counts it as 0 instead).
    """

    def _update(self, hit: Tensor, asked: Tensor, parsed: Tensor) -> None:
        # Move asked levels to the front in depth order; hits elsewhere are False, so a pair
        # that reaches past the asked sequence never counts.
        order = torch.argsort((~asked).to(torch.uint8), dim=1, stable=True)
        seq = hit.gather(1, order)
        pairs = (seq[:, :-1] & seq[:, 1:]).sum(1)
        self._add(pairs, asked.sum(1) - 1)


class HierarchicalF1(_HierMetric):
    """Micro hierarchical F1: hP = right / predicted levels, hR = right / asked levels.

    Predicted levels are the asked levels with a parsed answer; an unparseable answer is no
    prediction (it lowers recall, not precision). F1 = 2 hP hR / (hP + hR), 0 when both are 0.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("hits", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("predicted", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("asked", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _update(self, hit: Tensor, asked: Tensor, parsed: Tensor) -> None:
        self.hits += hit.sum()
        self.predicted += (asked & parsed).sum()
        self.asked += asked.sum()

    def compute(self) -> Tensor:
        precision, recall = _ratio(self.hits, self.predicted), _ratio(self.hits, self.asked)
        if self.asked == 0:
            return recall  # NaN: nothing was asked
        if self.hits == 0:
            return torch.tensor(0.0, dtype=torch.float64, device=self.hits.device)
        return 2 * precision * recall / (precision + recall)


class UnparseableRate(_HierMetric):
    """Share of asked questions whose answer could not be parsed (each is also counted wrong)."""

    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("unparsed", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("asked", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _update(self, hit: Tensor, asked: Tensor, parsed: Tensor) -> None:
        self.unparsed += (asked & ~parsed).sum()
        self.asked += asked.sum()

    def compute(self) -> Tensor:
        return _ratio(self.unparsed, self.asked)


def hierarchical_metrics(max_levels: int, **metric_kwargs) -> MetricCollection:
    """Every metric under the names used in metrics.json and reports.

    `metric_kwargs` go to each metric (torchmetrics' own options, e.g. `sync_on_compute=False`
    where one process already holds every sample).
    """
    return MetricCollection(
        {
            "hca": HierarchicalConsistentAccuracy(**metric_kwargs),
            "leaf_accuracy": LeafAccuracy(**metric_kwargs),
            "per_level_accuracy": PerLevelAccuracy(max_levels, **metric_kwargs),
            "point_overlap": PointOverlapRatio(**metric_kwargs),
            "strict_point_overlap": StrictPointOverlap(**metric_kwargs),
            "top_overlap": TopOverlapRatio(**metric_kwargs),
            "hierarchical_f1": HierarchicalF1(**metric_kwargs),
            "unparseable_rate": UnparseableRate(**metric_kwargs),
        },
        # Groups are found by comparing states after the first update; equal counts by
        # coincidence would merge metrics that are not the same.
        compute_groups=False,
    )


def metrics_dict(collection: MetricCollection) -> dict[str, float | list[float | None] | None]:
    """`collection.compute()` as plain JSON-ready values; NaN (nothing counted) becomes None."""
    out: dict[str, float | list[float | None] | None] = {}
    per_level = {name for name, metric in collection.items() if isinstance(metric, PerLevelAccuracy)}
    for name, value in collection.compute().items():
        values = value.detach().cpu().to(torch.float64)
        as_list = [None if math.isnan(v) else v for v in values.flatten().tolist()]
        out[name] = as_list if values.ndim or name in per_level else as_list[0]  # per level: a list, even of one
    return out
