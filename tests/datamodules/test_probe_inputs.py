"""Extraction inputs: stable sample ids, labels resolved through the taxonomy, one-line errors."""

from __future__ import annotations

import json

import pytest

from hiertrain.datamodules.probe_inputs import ProbeInputDataModule
from hiertrain.core.errors import HierError


def _write(tmp_path, lines: list[str]) -> str:
    p = tmp_path / "images.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def test_image_records_resolve_labels_and_skip_done_ids(synth_dir):
    dm = ProbeInputDataModule(images=str(synth_dir / "images.jsonl"), taxonomy=str(synth_dir / "taxonomy.json"), batch_size=4)
    dm.setup("predict")
    first = json.loads((synth_dir / "images.jsonl").read_text().splitlines()[0])
    assert dm.records[0]["id"] == 0 and dm.records[0]["label"] == first["label"]
    assert len(dm.records[0]["levels"]) == 4
    dm.exclude_ids = {0, 1, 2}
    batch = next(iter(dm.predict_dataloader()))
    assert [r["id"] for r in batch["records"]] == [3, 4, 5, 6]
    assert batch["valid"].all() and len(batch["images"]) == 4


def test_label_spelling_is_normalised_and_unknown_labels_name_the_line(tmp_path, synth_dir):
    img = str(synth_dir / "images" / "red_solid_circle_0.png")
    good = json.dumps({"image": img, "label": "Red-Solid_circle", "split": "train"})
    dm = ProbeInputDataModule(images=_write(tmp_path, [good]), taxonomy=str(synth_dir / "taxonomy.json"))
    dm.setup()
    assert dm.records[0]["label"] == "red solid circle"
    bad = json.dumps({"image": img, "label": "purple hexagon", "split": "train"})
    with pytest.raises(HierError, match=r"images.jsonl:2: label 'purple hexagon' not in taxonomy"):
        ProbeInputDataModule(images=_write(tmp_path, [good, bad]), taxonomy=str(synth_dir / "taxonomy.json")).setup()
    with pytest.raises(HierError, match=r"images.jsonl:1: missing key .split."):
        ProbeInputDataModule(images=_write(tmp_path, ['{"image": "a", "label": "b"}']), taxonomy=str(synth_dir / "taxonomy.json")).setup()


def test_text_splits_must_be_leaf_disjoint(tmp_path, synth_dir):
    tax = json.loads((synth_dir / "taxonomy.json").read_text())
    leaves = list(tax)
    (tmp_path / "train.json").write_text(json.dumps({k: tax[k] for k in leaves[:3]}))
    (tmp_path / "test.json").write_text(json.dumps({k: tax[k] for k in leaves[2:4]}))
    dm = ProbeInputDataModule(mode="text", train_taxonomy=str(tmp_path / "train.json"), test_taxonomy=str(tmp_path / "test.json"))
    with pytest.raises(HierError, match=f"leaf '{leaves[2]}' is also in"):
        dm.setup()


def test_unreadable_images_are_skipped_and_named(tmp_path, synth_dir, bomb_png):
    # issue 11 case 5: `predict` on a truncated JPEG died with a traceback that never named the file
    import numpy as np
    from PIL import Image

    from hiertrain.datamodules.probe_inputs import ImageProbeDataset, collate_probe_inputs

    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "good.jpg")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "cut.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "cut.jpg").read_bytes()[:600])
    bomb_png(tmp_path / "bomb.png")
    records = [{"id": i, "image": name} for i, name in enumerate(["good.jpg", "cut.jpg", "bomb.png"])]
    data = ImageProbeDataset(records, tmp_path)
    batch = collate_probe_inputs([data[i] for i in range(3)])
    assert [r["id"] for r in batch["records"]] == [0] and len(batch["images"]) == 1
    assert len(batch["skipped"]) == 2
    assert "cut.jpg: cannot read image of sample 1" in batch["skipped"][0]
    assert "bomb.png: cannot read image of sample 2 (DecompressionBombError" in batch["skipped"][1]
    empty = collate_probe_inputs([data[1]])  # a batch of only bad images still collates
    assert empty["records"] == [] and empty["images"] == [] and len(empty["skipped"]) == 1
