"""The one per-batch scoring step shared by every place that answers evaluation batches.

`hiertrain test` (`QuestionEvaluator.test_step`), LoRA validation (`LoRATuner.validation_step`)
and the before/after comparison (`callbacks.before_after.evaluate_split`) all score a collated
batch of dataset items the same way: padding repeats (`valid: False`, another rank's samples) are
dropped, unreadable items (`error`) are counted as skipped and never put to the model, the rest
are answered by the given answerer. Kept here once so the three cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hiertrain.metrics.predictions import SamplePrediction

Item = dict[str, Any]


@dataclass
class BatchScore:
    """What one batch gave: the answered predictions and the items skipped for an error."""

    predictions: list[SamplePrediction]
    skipped: list[Item]


def score_batch(
    batch: list[Item],
    answer: Callable[[list[Item]], list[SamplePrediction]],
    *,
    check: Callable[[Item], str | None] | None = None,
    on_skip: Callable[[Item], None] | None = None,
    metrics: Any = None,
    depth: int | None = None,
    device: Any = None,
) -> BatchScore:
    """Score one collated batch: keep this rank's items, skip those with an error, answer the rest.

    `check(item)` may name a reason a readable item cannot be asked (e.g. an image the model
    refuses); it becomes the item's error. `on_skip(item)` records each skipped item (the run
    directory's skip list). `metrics`: a torchmetrics metric updated with `to_tensors(preds,
    depth)` moved to `device` (its states sync over ranks by themselves)."""
    items = [item for item in batch if item["valid"]]  # padding repeats are another rank's samples
    if check is not None:
        for item in items:
            if not item["error"]:
                item["error"] = check(item)
    skipped = [item for item in items if item["error"]]
    if on_skip is not None:
        for item in skipped:
            on_skip(item)
    good = [item for item in items if not item["error"]]
    predictions = answer(good) if good else []
    if metrics is not None and predictions:
        from hiertrain.metrics.predictions import to_tensors

        tensors = to_tensors(predictions, depth)
        metrics.update(*(t if device is None else t.to(device) for t in tensors))
    return BatchScore(predictions, skipped)


def gather_predictions(predictions: list[SamplePrediction]) -> list[SamplePrediction]:
    """Every rank's predictions, concatenated and sorted by sample id (identity outside a
    process group): the per-sample list the paired before/after comparison needs."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, predictions)
        predictions = [p for part in parts for p in part]
    return sorted(predictions, key=lambda p: p.id)
