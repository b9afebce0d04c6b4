"""The correlation helpers equal torchmetrics' (they exist so `hiertrain report` need not import it)."""

from __future__ import annotations

import math

import torch
from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef

from hiertrain.metrics.correlation import average_ranks, pearson_columns, spearman


def test_pearson_and_spearman_equal_torchmetrics() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 6, (9, 40), generator=gen).to(torch.float64)  # ties in every column
    y = x * 0.5 + torch.randn(9, 40, generator=gen, dtype=torch.float64)
    ours = pearson_columns(x, y)
    for k in range(40):
        assert math.isclose(float(ours[k]), float(pearson_corrcoef(x[:, k], y[:, k])), rel_tol=0, abs_tol=1e-12)
        # torchmetrics ranks in float32 and adds 1e-6 to the denominator: equal to that, not to the bit
        assert math.isclose(spearman(x[:, k], y[:, k]), float(spearman_corrcoef(x[:, k], y[:, k])), rel_tol=0, abs_tol=2e-6)


def test_ties_share_their_mean_rank_and_constant_columns_have_no_r() -> None:
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0])).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]
    x = torch.tensor([[1.0, 2.0], [1.0, 3.0], [1.0, 5.0]])
    r = pearson_columns(x, torch.tensor([[1.0, 1.0], [2.0, 2.0], [4.0, 3.0]]))
    assert math.isnan(float(r[0])) and float(r[1]) > 0.9
