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

The counting and the final division live in `hiertrain.metrics.functional` (torchmetrics'
functional form); a class here only declares its count states with their reduction and adds
each batch's counts, so the class and the one-shot functions cannot drift apart.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from hiertrain.metrics import functional as hier
from hiertrain.metrics.functional import MAX_DEPTH, RATIO_SCALE, json_values
from hiertrain.metrics.letter_bias import letter_compute, letter_update
from hiertrain.protocol.prompts import LETTERS

__all__ = [
    "MAX_DEPTH",
    "RATIO_SCALE",
    "ConditionalAccuracy",
    "HierarchicalConsistentAccuracy",
    "HierarchicalF1",
    "HierarchicalPrecision",
    "HierarchicalRecall",
    "MistakeSeverity",
    "PathConsistency",
    "LeafAccuracy",
    "PerLevelAccuracy",
    "PointOverlapRatio",
    "ProbeAccuracy",
    "StrictPointOverlap",
    "TopOverlapRatio",
    "UnparseableRate",
    "hierarchical_metrics",
    "json_values",
    "metrics_dict",
    "taxonomy_metrics",
]

# results with one entry per level (torchmetrics squeezes a one-level result; `metrics_dict` undoes it)
PER_LEVEL_KEYS = frozenset(
    {"per_level_accuracy", "conditional_accuracy", "mistake_lca_depth_per_level", "mistake_distance_per_level", "mistake_severity"}
)


class _HierMetric(Metric):
    """Common flags and input checks; subclasses declare their integer count states (summed
    across processes) and implement `_update` on (hit, asked, parsed) with `hiertrain.metrics.functional`."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def _counts(self, *names: str) -> None:
        for name in names:
            self.add_state(name, torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self, correct: Tensor, asked: Tensor, parsed: Tensor | None = None, valid: Tensor | None = None
    ) -> None:
        if correct.ndim != 2 or correct.shape != asked.shape:
            raise ValueError(f"correct and asked must both be [B, L]; got {tuple(correct.shape)} and {tuple(asked.shape)}")
        self._update(*hier.prepare(correct, asked, parsed, valid))

    def _update(self, hit: Tensor, asked: Tensor, parsed: Tensor) -> None:
        raise NotImplementedError


class _SampleRatio(_HierMetric):
    """Mean over samples of a per-sample ratio, kept as an exact scaled integer sum."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._counts("ratio_sum", "samples")

    def _add(self, ratio_sum: Tensor, samples: Tensor) -> None:
        self.ratio_sum += ratio_sum
        self.samples += samples

    def compute(self) -> Tensor:
        return hier.sample_ratio_compute(self.ratio_sum, self.samples)


class HierarchicalConsistentAccuracy(_HierMetric):
    """HCA: share of samples whose every asked level is right."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._counts("hits", "samples")

    def _update(self, hit: Tensor, asked: Tensor, parsed: Tensor) -> None:
        hits, samples = hier.hca_update(hit, asked)
        self.hits += hits
        self.samples += samples

    def compute(self) -> Tensor:
        return hier.ratio(self.hits, self.samples)


class LeafAccuracy(_HierMetric):
    """Share of samples whose leaf (deepest asked level) is right."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._counts("hits", "samples")

    def _update(self, hit: Tensor, asked: Tensor, parsed: Tensor) -> None:
        hits, samples = hier.leaf_accuracy_update(hit, asked)
        self.hits += hits
        self.samples += samples

    def compute(self) -> Tensor:
        return hier.ratio(self.hits, self.samples)


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
        hits, asked_n = hier.per_level_update(hit, asked)
        self.hits[:width] += hits
        self.asked[:width] += asked_n

    def compute(self) -> Tensor:
        return hier.ratio(self.hits, self.asked)


class PointOverlapRatio(_SampleRatio):
    """POR: mean over samples of (right asked levels / asked levels)."""

    def _update(self, hit: Tensor, asked: Tensor, parsed: Tensor) -> None:
        self._add(*hier.point_overlap_update(hit, asked))


class StrictPointOverlap(_SampleRatio):
    """Strict POR: mean over samples of (longest right prefix of the asked sequence / asked levels).

    The prefix starts at the sample's shallowest asked level and stops at its first wrong one.
    """

    def _update(self, hit: Tensor, asked: Tensor, parsed: Tensor) -> None:
        self._add(*hier.strict_point_overlap_update(hit, asked))


class TopOverlapRatio(_SampleRatio):
    """TOR: mean over samples of (consecutive right pairs in the asked sequence / (asked - 1)).

    A sample with a single asked level has no pair: it is left out of this metric's denominator
    (the paper's script counts it as 0 instead).
    """

    def _update(self, hit: Tensor, asked: Tensor, parsed: Tensor) -> None:
        self._add(*hier.top_overlap_update(hit, asked))


class HierarchicalF1(_HierMetric):
    """Micro hierarchical F1: hP = right / predicted levels, hR = right / asked levels.

    Predicted levels are the asked levels with a parsed answer; an unparseable answer is no
    prediction (it lowers recall, not precision). F1 = 2 hP hR / (hP + hR), 0 when both are 0.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._counts("hits", "predicted", "asked")

    def _update(self, hit: Tensor, asked: Tensor, parsed: Tensor) -> None:
        hits, predicted, asked_n = hier.hierarchical_f1_update(hit, asked, parsed)
        self.hits += hits
        self.predicted += predicted
        self.asked += asked_n

    def compute(self) -> Tensor:
        return hier.hierarchical_f1_compute(self.hits, self.predicted, self.asked)


class HierarchicalPrecision(HierarchicalF1):
    """Micro hP (Kiritchenko et al. 2006) over the asked levels: right / predicted levels.

    The predicted set of a sample is its parsed picks, the true set its truths at the asked levels;
    both hold one node per level, so their overlap is the right levels. With `HierarchicalRecall`
    these are the hP and hR that `HierarchicalF1` combines (hF1 = 2 hP hR / (hP + hR)).
    """

    def compute(self) -> Tensor:
        return hier.hierarchical_precision_compute(self.hits, self.predicted)


class HierarchicalRecall(HierarchicalF1):
    """Micro hR over the asked levels: right / asked levels (an unparseable answer lowers it)."""

    def compute(self) -> Tensor:
        return hier.hierarchical_recall_compute(self.hits, self.asked)


class _PerLevel(_HierMetric):
    """Count states with one entry per level 0..max_levels-1; a narrower batch fills the first ones."""

    def __init__(self, max_levels: int, names: tuple[str, ...], **kwargs) -> None:
        super().__init__(**kwargs)
        if not 1 <= max_levels <= MAX_DEPTH:
            raise ValueError(f"max_levels must be in 1..{MAX_DEPTH}; got {max_levels}")
        self.max_levels = max_levels
        for name in names:
            self.add_state(name, torch.zeros(max_levels, dtype=torch.long), dist_reduce_fx="sum")

    def _width(self, t: Tensor) -> int:
        width = t.shape[-1]
        if width > self.max_levels:
            raise ValueError(f"batch has {width} levels but {type(self).__name__}(max_levels={self.max_levels})")
        return width


class ConditionalAccuracy(_PerLevel):
    """Per level k >= 2: P(level k right | level k - 1 right), over samples asked both; NaN at level 1."""

    def __init__(self, max_levels: int, **kwargs) -> None:
        super().__init__(max_levels, ("hits", "given"), **kwargs)

    def _update(self, hit: Tensor, asked: Tensor, parsed: Tensor) -> None:
        width = self._width(asked)
        hits, given = hier.conditional_accuracy_update(hit, asked)
        self.hits[:width] += hits
        self.given[:width] += given

    def compute(self) -> Tensor:
        return hier.ratio(self.hits, self.given)


class _TaxonomyMetric(_PerLevel):
    """A metric that also reads the placement codes (`hiertrain.metrics.placement`): ``lca`` or
    ``links`` [B, L] int tensors, padding rows dropped with the others."""

    code_name = ""

    def update(  # type: ignore[override]
        self, correct: Tensor, asked: Tensor, parsed: Tensor | None = None, valid: Tensor | None = None, **codes: Tensor
    ) -> None:
        if correct.ndim != 2 or correct.shape != asked.shape:
            raise ValueError(f"correct and asked must both be [B, L]; got {tuple(correct.shape)} and {tuple(asked.shape)}")
        if self.code_name not in codes:
            raise ValueError(f"{type(self).__name__} needs {self.code_name}= (hiertrain.metrics.placement)")
        code = hier._kept(codes[self.code_name], correct.to(torch.bool), valid, self.code_name)
        self._update_codes(*hier.prepare(correct, asked, parsed, valid), code)

    def _update_codes(self, hit: Tensor, asked: Tensor, parsed: Tensor, code: Tensor) -> None:
        raise NotImplementedError


class MistakeSeverity(_TaxonomyMetric):
    """How far wrong picks land from the truth: mean LCA depth and tree distance (per level and
    overall), the histogram of wrong picks per LCA depth, and the wrong picks with no place in the
    taxonomy (counted apart, never in the means). Needs ``lca=``."""

    code_name = "lca"
    higher_is_better = None  # a deeper LCA is a milder mistake, a longer distance a worse one

    def __init__(self, max_levels: int, **kwargs) -> None:
        super().__init__(max_levels, ("lca_sum", "distance_sum", "mistakes", "unplaced", "histogram"), **kwargs)

    def _update_codes(self, hit: Tensor, asked: Tensor, parsed: Tensor, code: Tensor) -> None:
        width = self._width(asked)
        for name, value in zip(
            ("lca_sum", "distance_sum", "mistakes", "unplaced", "histogram"),
            hier.mistake_severity_update(hit, asked, parsed, code),
        ):
            getattr(self, name)[:width] += value

    def compute(self) -> dict[str, Tensor]:
        return {
            **hier.mistake_severity_compute(self.lca_sum, self.distance_sum, self.mistakes),
            "mistake_severity": self.histogram.clone(),
            "mistakes_unplaced": self.unplaced.sum(),
        }


class PathConsistency(_TaxonomyMetric):
    """Share of samples (2+ asked levels) whose picks form a path of the taxonomy, right or wrong.
    Needs ``links=``."""

    code_name = "links"

    def __init__(self, **kwargs) -> None:
        super().__init__(1, (), **kwargs)
        self._counts("consistent", "samples")

    def _update_codes(self, hit: Tensor, asked: Tensor, parsed: Tensor, code: Tensor) -> None:
        consistent, samples = hier.path_consistency_update(asked, parsed, code)
        self.consistent += consistent
        self.samples += samples

    def compute(self) -> Tensor:
        return hier.ratio(self.consistent, self.samples)


class UnparseableRate(_HierMetric):
    """Share of asked questions whose answer could not be parsed (each is also counted wrong)."""

    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._counts("unparsed", "asked")

    def _update(self, hit: Tensor, asked: Tensor, parsed: Tensor) -> None:
        unparsed, asked_n = hier.unparseable_update(asked, parsed)
        self.unparsed += unparsed
        self.asked += asked_n

    def compute(self) -> Tensor:
        return hier.ratio(self.unparsed, self.asked)


class ProbeAccuracy(Metric):
    """Per-level accuracy ``[sites, levels]`` and HCA ``[sites]`` of many probes in one metric.

    The evaluation's definitions (`hiertrain.metrics.functional`: `per_level_update`, `hca_update`)
    applied to every site at once: each site is an independent metric over the same samples (a
    sample's HCA counts when every asked level is right; samples with nothing asked are in no
    denominator; ``valid`` False rows are DDP padding, dropped). Integer counts, summed across
    processes.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_sites: int, num_levels: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("hits", torch.zeros(num_sites, num_levels, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("asked", torch.zeros(num_sites, num_levels, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("hca_hits", torch.zeros(num_sites, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("samples", torch.zeros(num_sites, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: Tensor, asked: Tensor, valid: Tensor | None = None) -> None:
        """``correct [B, sites, levels]``, ``asked [B, levels]``, ``valid [B]`` (all bool)."""
        if correct.ndim != 3 or correct.shape[1:] != self.hits.shape:
            raise ValueError(f"correct must be [B, {', '.join(map(str, self.hits.shape))}]; got {tuple(correct.shape)}")
        hit, asked, _ = hier.prepare(correct, asked, valid=valid)
        hits, asked_n = hier.per_level_update(hit, asked)
        hca_hits, samples = hier.hca_update(hit, asked)
        self.hits += hits
        self.asked += asked_n
        self.hca_hits += hca_hits
        self.samples += samples

    def compute(self) -> tuple[Tensor, Tensor]:
        """(accuracy ``[sites, levels]``, HCA ``[sites]``) in float64, NaN where nothing was counted.

        torchmetrics squeezes a one-element result to a scalar (one site: HCA ``[]``); `shaped`
        restores the shapes.
        """
        return hier.ratio(self.hits, self.asked), hier.ratio(self.hca_hits, self.samples)

    def shaped(self, accuracy: Tensor, hca: Tensor) -> tuple[Tensor, Tensor]:
        """`compute()`'s result as ``[sites, levels]`` and ``[sites]`` whatever torchmetrics squeezed."""
        return accuracy.reshape(self.hits.shape), hca.reshape(self.hca_hits.shape)


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
            "hierarchical_precision": HierarchicalPrecision(**metric_kwargs),
            "hierarchical_recall": HierarchicalRecall(**metric_kwargs),
            "conditional_accuracy": ConditionalAccuracy(max_levels, **metric_kwargs),
            "unparseable_rate": UnparseableRate(**metric_kwargs),
        },
        # Groups are found by comparing states after the first update; equal counts by
        # coincidence would merge metrics that are not the same.
        compute_groups=False,
    )


def taxonomy_metrics(max_levels: int, **metric_kwargs) -> MetricCollection:
    """The measures that need the taxonomy (`functional.taxonomy_scores` from batches): update with
    ``(correct, asked, parsed, valid, lca=..., links=...)`` (`hiertrain.metrics.placement`)."""
    return MetricCollection(
        {
            "path_consistency": PathConsistency(**metric_kwargs),
            "mistake_severity": MistakeSeverity(max_levels, **metric_kwargs),
        },
        compute_groups=False,
    )


def metrics_dict(collection: MetricCollection) -> dict[str, float | list[float | None] | None]:
    """`collection.compute()` as plain JSON-ready values; NaN (nothing counted) becomes None.

    Per-level results stay lists with one level too (torchmetrics squeezes a one-element result).
    """
    values = collection.compute()
    return json_values({k: v.reshape(-1) if k in PER_LEVEL_KEYS else v for k, v in values.items()})


class LetterBias(Metric):
    """Truth and pick counts per option letter, as sum states so DDP stays exact; `compute()` =
    `hiertrain.metrics.letter_bias.letter_compute` (rates and the chi-square test).

    update(truth [N], pick [N] (-1 = unparseable), valid [N] | None = DDP padding mask)."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, num_letters: int = len(LETTERS), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_letters = num_letters
        self.add_state("truths", torch.zeros(num_letters, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("picks", torch.zeros(num_letters, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, truth: Tensor, pick: Tensor, valid: Tensor | None = None) -> None:
        if valid is not None:
            truth, pick = truth[valid.bool()], pick[valid.bool()]
        t, p = letter_update(truth, pick, self.num_letters)
        self.truths += t.to(self.truths.device)
        self.picks += p.to(self.picks.device)

    def compute(self) -> dict[str, Any]:  # type: ignore[override]
        return letter_compute(self.truths, self.picks)
