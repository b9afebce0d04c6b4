"""Extraction inputs: stable sample ids, labels resolved through the taxonomy, one-line errors."""

from __future__ import annotations

import json

import pytest

from hiertrain.datamodules.probe_inputs import ProbeInputDataModule
from hiertrain.base.errors import HierError


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


def test_paper_resizing_per_site_family():
    """vlm_probe_data_gen.py:122-137 (vision/projector: 1680 px, 1280*28*28) and _llm.py:156-171
    (LLM sites: 1024 px, 640*28*28); smaller images and the default (None) are untouched."""
    from PIL import Image

    from hiertrain.datamodules.probe_inputs import paper_resize

    big = Image.new("RGB", (3000, 2000))
    # 3000x2000 -> 1680x1120 -> smart_resize(1120, 1680, max 1003520): beta=1.369 -> 29*28 x 43*28
    assert paper_resize(big, 1680, 1280 * 28 * 28).size == (43 * 28, 29 * 28)
    # 3000x2000 -> 1024x682 -> smart_resize(682, 1024, max 501760): beta=1.180 -> 20*28 x 30*28
    assert paper_resize(big, 1024, 640 * 28 * 28).size == (30 * 28, 20 * 28)
    small = Image.new("RGB", (1000, 800))
    assert paper_resize(small, 1024, 640 * 28 * 28) is small and paper_resize(big, None, None) is big


def test_resize_settings_reach_the_items_and_the_store_info(synth_dir):
    dm = ProbeInputDataModule(images=str(synth_dir / "images.jsonl"), taxonomy=str(synth_dir / "taxonomy.json"),
                              max_image_side=60, max_pixels=56 * 56, batch_size=2)  # fmt: skip
    dm.setup()
    batch = next(iter(dm.predict_dataloader()))
    from PIL import Image

    original = Image.open(synth_dir / dm.records[0]["image"]).size
    assert max(original) > 60 and batch["images"][0].size == (56, 56)  # scaled to 60 px, then 56*56 px
    assert dm.describe()["info"]["max_image_side"] == 60 and dm.describe()["info"]["max_pixels"] == 56 * 56
    with pytest.raises(HierError, match="max_pixels applies with max_image_side"):
        ProbeInputDataModule(images="x", taxonomy="y", max_pixels=100)


def test_text_probe_leaf_adds_the_leaf_slot_with_the_answer_sentence(tmp_path, synth_dir):
    tax = json.loads((synth_dir / "taxonomy.json").read_text())
    leaves = list(tax)
    (tmp_path / "train.json").write_text(json.dumps({k: tax[k] for k in leaves[:3]}))
    (tmp_path / "test.json").write_text(json.dumps({k: tax[k] for k in leaves[3:5]}))
    kw = dict(mode="text", train_taxonomy=str(tmp_path / "train.json"), test_taxonomy=str(tmp_path / "test.json"))
    plain = ProbeInputDataModule(**kw, label_in_text=True)
    plain.setup()
    depth = plain.taxonomy.depth
    assert plain.describe()["prompt_for_level"][-1] == -1 and len(plain._prompts[0]) == depth - 1
    leaf = ProbeInputDataModule(**kw, label_in_text=True, probe_leaf=True)
    leaf.setup()
    assert leaf.describe()["prompt_for_level"] == list(range(depth))
    slot, text = leaf._prompts[0][-1]
    name = leaf.taxonomy.level_names[depth - 1]
    assert slot == depth - 1 and leaf.records[0]["levels"][-1] == leaves[0]
    # text_probing_data_gen.py:86's wording, at the leaf level
    assert text == f"Given the {leaves[0]}, what is its taxonomic classification at the {name} level? It belongs to {leaves[0]}."
