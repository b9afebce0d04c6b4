"""Paired comparison of two runs over the same images: differences, paired bootstrap, McNemar.

Both runs answered the same questions about the same images, so the comparison is paired: each
bootstrap replicate resamples images once and scores both runs on that same resample (the
difference's interval is then much narrower than two independent intervals would suggest). For
the per-image outcomes (HCA: all asked levels right; leaf accuracy: the deepest asked level
right) the exact McNemar test counts the discordant images, b = right in A only and c = right in
B only, and gives the two-sided binomial p-value P(X <= min(b, c)) * 2 (capped at 1) with
X ~ Binomial(b + c, 1/2).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from hiertrain.metrics.bootstrap import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_CI,
    DEFAULT_SEED,
    PER_LEVEL_METRICS,
    check_settings,
    joint_patterns,
    pattern_replicates,
    pattern_values,
    percentile_interval,
)

# metrics with a per-image right/wrong outcome: McNemar applies
MCNEMAR_METRICS = ("hca", "leaf_accuracy")


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0; got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def _outcomes(states: dict[str, tuple[Tensor, Tensor]], inverse: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """(right, counted) per image for a 0/1 metric, from its pattern's states."""
    num, den = states[name]
    return num[:, 0][inverse] > 0, den[:, 0][inverse] > 0


def paired_comparison(
    a: tuple[Tensor, ...],
    b: tuple[Tensor, ...],
    n_boot: int = DEFAULT_BOOTSTRAP,
    ci: float = DEFAULT_CI,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """B minus A for every interval metric, with a paired bootstrap interval; McNemar for HCA and
    leaf accuracy. `a`, `b`: (correct, asked, parsed) [N, L] of the same N images in the same order
    with the same asked levels (the caller checks that: `hiertrain.report.compare`); with the
    placement codes appended, (correct, asked, parsed, lca, links), the taxonomy measures too.
    """
    check_settings(n_boot, ci)
    if a[0].shape[0] != b[0].shape[0]:
        raise ValueError(f"paired runs need the same images; got {a[0].shape[0]} and {b[0].shape[0]}")
    n = a[0].shape[0]
    # Images grouped by their rows in both runs; each replicate resamples images once for both
    # (the same seeded draws as `resample_counts`), sums exact (hiertrain.metrics.bootstrap).
    inverse, (states_a, states_b) = joint_patterns([a, b])
    everyone = torch.bincount(inverse).unsqueeze(0)
    point_a, point_b = pattern_values(states_a, everyone), pattern_values(states_b, everyone)
    reps_a = reps_b = None
    if n_boot and n:
        blocks = [(pattern_values(states_a, c), pattern_values(states_b, c)) for c in pattern_replicates(inverse, n_boot, seed)]
        reps_a = {name: torch.cat([x[name] for x, _ in blocks]) for name in states_a}
        reps_b = {name: torch.cat([y[name] for _, y in blocks]) for name in states_b}
    metrics: dict[str, Any] = {}
    for name in point_a:
        rows = []
        low = high = None
        if reps_a is not None and reps_b is not None:
            low, high = percentile_interval(reps_b[name] - reps_a[name], ci)
        for k in range(point_a[name].shape[1]):
            va, vb = point_a[name][0, k].item(), point_b[name][0, k].item()
            entry: dict[str, Any] = {"a": _num(va), "b": _num(vb), "difference": _num(vb - va)}
            if low is not None and high is not None and not (math.isnan(low[k].item()) or math.isnan(high[k].item())):
                entry["interval"] = [low[k].item(), high[k].item()]
            else:
                entry["interval"] = None
            rows.append(entry)
        metrics[name] = rows if name in PER_LEVEL_METRICS else rows[0]
    for name in MCNEMAR_METRICS:
        right_a, counted = _outcomes(states_a, inverse, name)
        right_b, _ = _outcomes(states_b, inverse, name)
        only_a = int((right_a & ~right_b & counted).sum())
        only_b = int((right_b & ~right_a & counted).sum())
        metrics[name]["mcnemar"] = {"a_only": only_a, "b_only": only_b, "p": mcnemar_exact(only_a, only_b)}
    return {
        "method": "paired percentile bootstrap over images; exact McNemar (two-sided binomial on discordant images)",
        "ci": ci,
        "bootstrap": n_boot,
        "seed": seed,
        "num_samples": n,
        "metrics": metrics,
    }


def _num(x: float) -> float | None:
    return None if math.isnan(x) else x
