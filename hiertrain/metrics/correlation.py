"""How sure a correlation across models is: bootstrap interval over models, permutation p-value.

The unit is the **model** (one (text HCA, visual HCA) point each): the interval resamples models
with replacement (percentile interval of Pearson's r; replicates where one side is constant have no
r and are left out), and the p-value is the two-sided permutation test of r = 0: the share of
pairings of the text scores with the visual scores whose |r| is at least the observed |r| (every
pairing when n! <= `n_perm`, else `n_perm` seeded random ones, counted as (1 + hits) / (1 + n_perm)).
With fewer than `MIN_MODELS` models neither is meaningful and none is given.
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import torch

MIN_MODELS = 4


def pearson_columns(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson r of each column pair of [n, k] tensors; NaN where one is constant.

    torchmetrics' `pearson_corrcoef` (tests/metrics/test_correlation.py checks they agree), written
    out because importing torchmetrics pulls in transformers: seconds of every `hiertrain report`."""
    xm, ym = x - x.mean(0), y - y.mean(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = ((xm * ym).sum(0) / torch.sqrt((xm * xm).sum(0) * (ym * ym).sum(0))).clamp(-1.0, 1.0)
    constant = (x.std(0) == 0) | (y.std(0) == 0)
    return torch.where(constant, torch.full_like(r, math.nan), r)


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor, ties given their mean rank (torchmetrics' `_rank_data`)."""
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(x.dtype)
    return (ends - (counts.to(x.dtype) - 1) / 2)[inverse]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rho of two 1-D tensors: Pearson's r of their average ranks (torchmetrics'
    `spearman_corrcoef` to within 2e-6: it ranks in float32 and adds 1e-6 to the denominator)."""
    return float(pearson_columns(average_ranks(x)[:, None], average_ranks(y)[:, None])[0])


def correlation_test(
    x: list[float], y: list[float], n_boot: int = 2000, ci: float = 0.95, seed: int = 0, n_perm: int = 10000
) -> dict[str, Any]:
    """`{"n", "too_few", "pearson_interval", "p_value", "method"}` for points (x[i], y[i])."""
    n = len(x)
    out: dict[str, Any] = {"n": n, "too_few": n < MIN_MODELS, "pearson_interval": None, "p_value": None}
    if n < MIN_MODELS:
        return out
    tx, ty = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    observed = pearson_columns(tx[:, None], ty[:, None])[0]
    if math.isnan(observed):
        return out
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(n, (n, n_boot), generator=gen)
    reps = pearson_columns(tx[idx], ty[idx])
    alpha = 1 - ci
    bounds = torch.nanquantile(reps, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64))
    out["pearson_interval"] = [round(float(bounds[0]), 4), round(float(bounds[1]), 4)]
    if math.factorial(n) <= n_perm:
        perms = torch.tensor(list(itertools.permutations(range(n)))).T  # [n, n!], identity included
        hits = (pearson_columns(tx[perms], ty[:, None].expand(n, perms.shape[1])).abs() >= abs(observed) - 1e-12).sum()
        out["p_value"] = round(float(hits) / perms.shape[1], 4)
        out["method"] = f"bootstrap over models ({n_boot}); exact permutation test ({perms.shape[1]} pairings)"
    else:
        perms = torch.argsort(torch.rand(n_perm, n, generator=gen), dim=1).T
        hits = (pearson_columns(tx[perms], ty[:, None].expand(n, n_perm)).abs() >= abs(observed) - 1e-12).sum()
        out["p_value"] = round((1 + float(hits)) / (1 + n_perm), 4)
        out["method"] = f"bootstrap over models ({n_boot}); permutation test ({n_perm} random pairings)"
    return out
