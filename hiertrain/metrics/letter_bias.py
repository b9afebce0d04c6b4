"""Letter bias: how often each option letter is picked vs how often it holds the truth.

A model that knows nothing but favours one letter scores chance only when the truths are
spread evenly over the letters; circular evaluation (every rotation of the options) spreads
them exactly, so the pick rates alone then show the bias. The test is Pearson's chi-square
goodness of fit of the pick counts against the truth rates (expected picks of letter k =
picks x truth_k / truths), df = letters that hold a truth - 1, p from the chi-square survival
function (`torch.special.gammaincc`: the regularized upper incomplete gamma, Q(df/2, x/2)).

The counts are integer sums (`letter_update`), so the `hiertrain.metrics.classes.LetterBias`
metric is exact under DDP and the one-shot `letter_bias` on a merged predictions file gives the
same numbers. No torchmetrics import here (`hiertrain score` starts without it). Used by
circular runs (`hiertrain.metrics.circular`) and the organisms' calibration table.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from hiertrain.base.errors import HierError
from hiertrain.protocol.prompts import LETTERS


def letter_update(truth: Tensor, pick: Tensor, num_letters: int) -> tuple[Tensor, Tensor]:
    """[N] truth letter indices and [N] picked letter indices (-1 = unparseable, not a pick) ->
    (truth counts [K], pick counts [K]) as int64."""
    truth, pick = truth.long().flatten(), pick.long().flatten()
    if truth.numel() and (int(truth.min()) < 0 or int(truth.max()) >= num_letters):
        raise HierError(f"truth letter index out of 0..{num_letters - 1}")
    if pick.numel() and int(pick.max()) >= num_letters:
        raise HierError(f"picked letter index out of 0..{num_letters - 1}")
    truths = torch.bincount(truth, minlength=num_letters)
    picks = torch.bincount(pick[pick >= 0], minlength=num_letters)
    return truths, picks


def letter_compute(truths: Tensor, picks: Tensor) -> dict[str, Any]:
    """Rates, the chi-square statistic, its df and p from the summed counts (JSON-ready)."""
    t = [int(v) for v in truths.tolist()]
    p = [int(v) for v in picks.tolist()]
    width = max([k + 1 for k, v in enumerate(t) if v] + [k + 1 for k, v in enumerate(p) if v] + [0])
    t, p = t[:width], p[:width]
    n_t, n_p = sum(t), sum(p)
    out: dict[str, Any] = {
        "letters": list(LETTERS[:width]),
        "truth_counts": t,
        "pick_counts": p,
        "truth_rate": [v / n_t for v in t] if n_t else None,
        "pick_rate": [v / n_p for v in p] if n_p else None,
        "chi2": None,
        "df": None,
        "p_value": None,
    }
    if not n_t or not n_p:
        return out
    expected = [n_p * v / n_t for v in t]
    if any(e == 0 and o for e, o in zip(expected, p)):  # a letter picked that never holds a truth
        stat = float("inf")
    else:
        stat = sum((o - e) ** 2 / e for o, e in zip(p, expected) if e > 0)
    df = sum(1 for e in expected if e > 0) - 1
    out.update(chi2=stat, df=df)
    if df >= 1:
        x = torch.tensor(stat, dtype=torch.float64)
        out["p_value"] = 0.0 if stat == float("inf") else float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), x / 2))
    return out


def level_letters(levels: Iterable[tuple[list[str], str, str | None]]) -> tuple[Tensor, Tensor]:
    """(options, truth, picked letter or None) per asked question -> (truth index [N], pick index
    [N], -1 = no pick): the one place a predictions file's letters become indices."""
    truth, pick = [], []
    for options, label, letter in levels:
        if label not in options:
            raise HierError(f"truth {label!r} is not among the options {options}")
        truth.append(options.index(label))
        pick.append(LETTERS.index(letter) if letter else -1)
    return torch.tensor(truth, dtype=torch.long), torch.tensor(pick, dtype=torch.long)


def letter_counts(levels: Iterable[tuple[list[str], str, str | None]], num_letters: int) -> tuple[list[int], list[int]]:
    """(truth counts, pick counts) over the first `num_letters` letters of these questions."""
    t, p = letter_update(*level_letters(levels), num_letters)
    return t.tolist(), p.tolist()


def letter_bias(levels: Iterable[tuple[list[str], str, str | None]]) -> dict[str, Any]:
    """One shot: `letter_compute` of these questions' counts."""
    truth, pick = level_letters(levels)
    t, p = letter_update(truth, pick, len(LETTERS))
    return letter_compute(t, p)
