"""Paired comparison: McNemar against hand-computed tables, paired bootstrap intervals."""

from __future__ import annotations

import math

import pytest
import torch

from hiertrain.metrics.paired import mcnemar_exact, paired_comparison


def test_mcnemar_matches_hand_computed_tables() -> None:
    # b=8, c=2: p = 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 * 56 / 1024
    assert mcnemar_exact(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert mcnemar_exact(2, 8) == mcnemar_exact(8, 2)
    # b=5, c=0: 2 / 2^5
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)
    # b=c: two-sided tail passes 1/2, capped at 1
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    # b=12, c=3: 2 * sum_{k<=3} C(15,k) / 2^15
    assert mcnemar_exact(12, 3) == pytest.approx(2 * sum(math.comb(15, k) for k in range(4)) / 2**15)


def _run(outcomes: list[bool], levels: int = 2):
    """Samples whose leaf is right or wrong as given; the root is always right."""
    right = torch.tensor(outcomes)
    correct = torch.stack([torch.ones_like(right), right], dim=1)[:, :levels]
    asked = torch.ones_like(correct)
    return correct, asked, torch.ones_like(correct)


def test_paired_counts_differences_and_interval() -> None:
    # 20 images: both right on 6, A only on 2, B only on 8, both wrong on 4
    a = [True] * 6 + [True] * 2 + [False] * 8 + [False] * 4
    b = [True] * 6 + [False] * 2 + [True] * 8 + [False] * 4
    result = paired_comparison(_run(a), _run(b), n_boot=500, seed=1)
    hca = result["metrics"]["hca"]
    assert hca["a"] == pytest.approx(8 / 20) and hca["b"] == pytest.approx(14 / 20)
    assert hca["difference"] == pytest.approx(6 / 20)
    assert hca["mcnemar"] == {"a_only": 2, "b_only": 8, "p": pytest.approx(2 * 56 / 1024)}
    low, high = hca["interval"]
    assert low <= 0.3 <= high and low > -0.1
    # root level: identical in both runs, so every paired replicate differs by exactly 0
    assert result["metrics"]["per_level_accuracy"][0]["interval"] == [0.0, 0.0]
    assert paired_comparison(_run(a), _run(b), n_boot=500, seed=1) == result


def test_paired_interval_is_narrower_than_unpaired() -> None:
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(200, generator=gen) < 0.5
    flip = torch.rand(200, generator=gen) < 0.1
    a, b = _run(base.tolist()), _run((base ^ flip).tolist())
    paired = paired_comparison(a, b, n_boot=400)["metrics"]["hca"]["interval"]
    # independent intervals would have a width about 2 * 1.96 * sqrt(2 * 0.25 / 200)
    unpaired_width = 2 * 1.96 * math.sqrt(2 * 0.25 / 200)
    assert paired[1] - paired[0] < 0.6 * unpaired_width


def test_different_image_counts_refused() -> None:
    with pytest.raises(ValueError, match="same images"):
        paired_comparison(_run([True, False]), _run([True]))
