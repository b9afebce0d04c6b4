"""The W&B sample table of an evaluation: one row per image, browsable beside the metrics.

Columns: `image` (a thumbnail; image mode only), `id`, `label`, then per level `<name> truth`,
`<name> pick`, `<name> correct` (and `<name> reply` for `answer: generate`); a level a sample
was not asked (the text-mode leaf) has no pick and no correct value. Rows: the first N
samples by id (`--wandb_log_samples N`, default 50), so two runs show the same images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from hiertrain.taxonomy.images import BAD_IMAGE_ERRORS, open_rgb
from hiertrain.metrics.predictions import SamplePrediction

DEFAULT_LOG_SAMPLES = 50
THUMBNAIL_SIDE = 160


def level_names(preds: list[SamplePrediction]) -> list[tuple[int, str]]:
    """(level number, name) of every level any sample holds, shallowest first."""
    names: dict[int, str] = {}
    for p in preds:
        for lv in p.levels:
            if lv.name or lv.level not in names:
                names[lv.level] = lv.name or names.get(lv.level) or f"level{lv.level}"
    return sorted(names.items())


def sample_table(
    preds: list[SamplePrediction], limit: int, with_reply: bool, locate: Callable[[str], Path] | None
) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of the first `limit` samples by id. `locate` (image mode) finds an image
    file; a thumbnail that cannot be read is an empty cell, never a dropped row."""
    import wandb

    chosen = sorted(preds, key=lambda p: p.id)[: max(0, limit)]
    levels = level_names(chosen)
    columns = (["image"] if locate else []) + ["id", "label"]
    for _, name in levels:
        columns += [f"{name} truth", f"{name} pick", f"{name} correct"] + ([f"{name} reply"] if with_reply else [])
    rows = []
    for p in chosen:
        row: list[Any] = []
        if locate:
            row.append(_thumbnail(locate(p.image or ""), wandb))
        row += [p.id, p.label]
        by_level = {lv.level: lv for lv in p.levels}
        for number, _ in levels:
            lv = by_level.get(number)
            asked = lv is not None and lv.asked
            row += [lv.truth if lv else None, lv.predicted if asked else None, lv.correct if asked else None]
            if with_reply:
                row.append(lv.reply if asked else None)
        rows.append(row)
    return columns, rows


def _thumbnail(path: Path, wandb: Any) -> Any:
    try:
        img = open_rgb(path)
    except BAD_IMAGE_ERRORS:
        return None
    img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return wandb.Image(img)
