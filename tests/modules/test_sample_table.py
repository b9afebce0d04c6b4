"""The W&B sample table: thumbnails, per-level truth / pick / correct, replies, the row cap."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from hiertrain.metrics.predictions import LevelPrediction, SamplePrediction
from hiertrain.modules.sample_table import THUMBNAIL_SIDE, sample_table


def _sample(i: int, image: str, mode: str = "image") -> SamplePrediction:
    levels = [
        LevelPrediction(level=1, name="genus", truth="Quercus", options=["Quercus", "Acer"], reply=f"B{i}",
                        letter="B", predicted="Acer", correct=False),
        LevelPrediction(level=2, name="species", truth="Quercus robur", options=["Quercus robur", "Acer rubrum"],
                        reply="A", letter="A", predicted="Quercus robur", correct=True, asked=mode == "image"),
    ]  # fmt: skip
    return SamplePrediction(id=i, levels=levels, image=image, label="Quercus robur", mode=mode)


def test_rows_capped_first_by_id_with_thumbnails_and_replies(tmp_path: Path) -> None:
    Image.new("RGB", (640, 320), (0, 128, 0)).save(tmp_path / "a.png")
    preds = [_sample(i, "a.png" if i != 1 else "missing.png") for i in (4, 1, 0, 3)]
    columns, rows = sample_table(preds, 3, with_reply=True, locate=lambda name: tmp_path / name)
    assert columns == ["image", "id", "label", "genus truth", "genus pick", "genus correct", "genus reply",
                       "species truth", "species pick", "species correct", "species reply"]  # fmt: skip
    assert [r[1] for r in rows] == [0, 1, 3]
    assert rows[0][3:] == ["Quercus", "Acer", False, "B0", "Quercus robur", "Quercus robur", True, "A"]
    assert max(rows[0][0].image.size) == THUMBNAIL_SIDE and rows[1][0] is None  # unreadable: empty cell, row kept


def test_text_mode_has_no_image_and_no_pick_for_the_unasked_leaf() -> None:
    columns, rows = sample_table([_sample(0, "x.png", mode="text")], 50, with_reply=False, locate=None)
    assert columns[:2] == ["id", "label"] and "genus reply" not in columns
    assert rows == [[0, "Quercus robur", "Quercus", "Acer", False, "Quercus robur", None, None]]
