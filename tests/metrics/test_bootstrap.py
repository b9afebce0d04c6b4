"""Bootstrap intervals over images: replicates are the metric code's values, intervals cover."""

from __future__ import annotations

import math

import pytest
import torch

from hiertrain.metrics.bootstrap import (
    bootstrap_intervals,
    replicate_values,
    resample_counts,
    sample_terms,
)
from hiertrain.base.errors import HierError
from hiertrain.metrics.classes import hierarchical_metrics, metrics_dict


def _random_batch(n: int, levels: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    correct = torch.rand(n, levels, generator=gen) < 0.6
    asked = torch.rand(n, levels, generator=gen) < 0.85
    asked[:, 0] |= torch.rand(n, generator=gen) < 0.5
    parsed = torch.rand(n, levels, generator=gen) < 0.9
    return correct, asked, parsed


def _metrics(correct, asked, parsed) -> dict:
    collection = hierarchical_metrics(correct.shape[1])
    collection.update(correct, asked, parsed)
    return metrics_dict(collection)


def _close(a, b) -> bool:
    if a is None or b is None or (isinstance(b, float) and math.isnan(b)):
        return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
    return abs(a - b) < 1e-12


def test_each_replicate_is_the_metric_on_the_resampled_images() -> None:
    correct, asked, parsed = _random_batch(40, 4, seed=1)
    asked[3] = False  # a sample with nothing asked: in no denominator
    terms = sample_terms(correct, asked, parsed)
    gen = torch.Generator().manual_seed(5)
    idx = torch.randint(40, (6, 40), generator=gen)
    counts = torch.stack([torch.bincount(row, minlength=40) for row in idx]).to(torch.float64)
    values = replicate_values(terms, torch.cat([torch.ones(1, 40, dtype=torch.float64), counts]))
    for r in range(7):
        rows = torch.arange(40) if r == 0 else idx[r - 1]
        expected = _metrics(correct[rows], asked[rows], parsed[rows])
        for name, reps in values.items():
            got = reps[r].tolist()
            want = expected[name] if name == "per_level_accuracy" else [expected[name]]
            assert all(_close(g, w) for g, w in zip(got, want)), (r, name, got, want)


def test_intervals_are_seeded_and_deterministic() -> None:
    correct, asked, parsed = _random_batch(60, 3, seed=2)
    a = bootstrap_intervals(correct, asked, parsed, n_boot=200, seed=7)
    b = bootstrap_intervals(correct, asked, parsed, n_boot=200, seed=7)
    c = bootstrap_intervals(correct, asked, parsed, n_boot=200, seed=8)
    assert a == b and a != c
    point = _metrics(correct, asked, parsed)
    for name in ("hca", "leaf_accuracy", "point_overlap", "strict_point_overlap", "top_overlap"):
        low, high = a[name]
        assert low <= point[name] <= high, name
    assert len(a["per_level_accuracy"]) == 3 and a["ci"] == 0.95 and a["bootstrap"] == 200


def test_level_never_asked_has_no_interval_and_zero_disables() -> None:
    correct, asked, parsed = _random_batch(20, 3, seed=3)
    asked[:, 2] = False
    out = bootstrap_intervals(correct, asked, parsed, n_boot=50)
    assert out["per_level_accuracy"][2] is None and out["per_level_accuracy"][0] is not None
    assert "hca" not in bootstrap_intervals(correct, asked, parsed, n_boot=0)
    with pytest.raises(HierError, match="--ci"):
        bootstrap_intervals(correct, asked, parsed, ci=1.5)


def _bernoulli_set(n: int, p: float, seed: int):
    """Two-level samples that are entirely right with probability p (else the leaf is wrong)."""
    gen = torch.Generator().manual_seed(seed)
    right = torch.rand(n, generator=gen) < p
    correct = torch.stack([torch.ones(n, dtype=torch.bool), right], dim=1)
    return correct, torch.ones(n, 2, dtype=torch.bool)


def test_95_percent_intervals_cover_the_true_accuracy_at_about_95_percent() -> None:
    """300 synthetic sets of 80 images with true HCA 0.3: coverage within a binomial tolerance."""
    p, n, reps = 0.3, 80, 300
    covered = 0
    for seed in range(reps):
        correct, asked = _bernoulli_set(n, p, seed)
        low, high = bootstrap_intervals(correct, asked, n_boot=400, seed=seed)["hca"]
        covered += low <= p <= high
    rate = covered / reps
    tolerance = 3 * math.sqrt(0.95 * 0.05 / reps)  # 0.038; the percentile method runs a little low
    print(f"coverage {rate:.3f} over {reps} sets")
    assert abs(rate - 0.95) <= tolerance + 0.01


def test_width_matches_the_normal_approximation() -> None:
    p, n = 0.3, 1000
    correct, asked = _bernoulli_set(n, p, seed=11)
    observed = correct[:, 1].double().mean().item()
    low, high = bootstrap_intervals(correct, asked, n_boot=2000, seed=0)["hca"]
    normal = 2 * 1.959964 * math.sqrt(observed * (1 - observed) / n)
    assert (high - low) == pytest.approx(normal, rel=0.1)
    assert (low + high) / 2 == pytest.approx(observed, abs=0.01)


def test_resample_counts_sum_to_n() -> None:
    counts = resample_counts(17, 9, seed=0)
    assert counts.shape == (9, 17) and torch.all(counts.sum(1) == 17)
