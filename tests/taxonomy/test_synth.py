"""hiertrain.taxonomy.synth and `hiertrain data synth`: a deterministic, visually decidable 4-level set."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from hiertrain.cli.main import main
from hiertrain.base.errors import HierError
from hiertrain.taxonomy.question_bank import read_questions
from hiertrain.taxonomy.synth import make_synthetic, split_counts
from hiertrain.taxonomy.taxonomy import Taxonomy, normalize_label

# hand count: 2 families x 2 shapes, 3 colours per shape, 2 textures per colour
CLASSES_PER_LEVEL = [2, 4, 12, 24]


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_is_byte_identical(tmp_path):
    a = make_synthetic(tmp_path / "a", images_per_leaf=3, seed=7, image_size=64)
    make_synthetic(tmp_path / "b", images_per_leaf=3, seed=7, image_size=64)
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert fa == fb
    assert len([k for k in fa if k.endswith(".png")]) == 72
    assert set(a) == {"images_dir", "taxonomy", "level_names", "images", "questions_random", "meta"}
    make_synthetic(tmp_path / "c", images_per_leaf=3, seed=8, image_size=64)
    fc = _files(tmp_path / "c")
    assert fc.keys() == fa.keys()
    differing = [k for k in fa if k.endswith(".png") and fa[k] != fc[k]]
    assert len(differing) == 72


def test_taxonomy_levels(synth_dir):
    tax = Taxonomy.from_json(synth_dir / "taxonomy.json")
    assert tax.level_names == ["family", "shape", "colour", "texture"]
    assert tax.classes_per_level() == CLASSES_PER_LEVEL
    assert tax.depth_range() == (4, 4)
    assert tax.trivial_levels() == [] and tax.problems() == []
    assert tax.path("red striped circle") == ("round", "circle", "red circle", "red striped circle")
    assert tax.nodes_at(0) == ["angular", "round"]
    # the file itself is the paper's format
    raw = json.loads((synth_dir / "taxonomy.json").read_text())
    assert all(path[-1] == leaf and len(path) == 4 for leaf, path in raw.items())


def test_counts_per_split(synth_dir):
    lines = (synth_dir / "images.jsonl").read_text().splitlines()
    images = [json.loads(line) for line in lines]
    assert len(images) == 24 * 3
    assert Counter(img["split"] for img in images) == {"train": 24, "val": 24, "test": 24}
    for split in ("train", "val", "test"):
        assert len({img["label"] for img in images if img["split"] == split}) == 24
    assert len({img["image"] for img in images}) == 72
    meta = json.loads((synth_dir / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["images"] == 72 and meta["leaves"] == 24
    assert meta["splits"] == {"train": 24, "val": 24, "test": 24}
    assert [lvl["classes"] for lvl in meta["levels"]] == CLASSES_PER_LEVEL


def test_split_counts():
    assert split_counts(3) == {"train": 1, "val": 1, "test": 1}
    assert split_counts(6) == {"train": 4, "val": 1, "test": 1}
    assert split_counts(10) == {"train": 6, "val": 2, "test": 2}
    with pytest.raises(HierError, match="images_per_leaf must be >= 3"):
        split_counts(2)


# argmax channel of the saturated (shape) pixels
CHANNEL = {"red": 0, "green": 1, "blue": 2}


def test_images_open_and_show_their_classes(synth_dir):
    images = [json.loads(line) for line in (synth_dir / "images.jsonl").read_text().splitlines()]
    for img in images:
        assert not img["image"].startswith("/")
        with Image.open(synth_dir / img["image"]) as im:
            assert im.size == (448, 448) and im.mode == "RGB"
            px = np.asarray(im).astype(int)
        colour, texture, _ = img["label"].split()
        saturated = px.max(axis=2) - px.min(axis=2) > 70
        # a triangle of radius >= 0.17 * side covers >= 3.7% of the image, half that when striped
        assert saturated.mean() > 0.01, img
        assert np.bincount(px[saturated].argmax(axis=1), minlength=3).argmax() == CHANNEL[colour]
        # a solid convex shape enters and leaves each row/column once (2 mask edges); stripes,
        # several periods across the shape, add edges in the direction that crosses them
        edges = max(_edges_per_line(saturated), _edges_per_line(saturated.T))
        assert (edges > 2.5) == (texture == "striped"), (img, edges)


def _edges_per_line(mask):
    rows = mask[mask.any(axis=1)].astype(int)
    padded = np.pad(rows, ((0, 0), (1, 1)))
    return np.abs(np.diff(padded, axis=1)).sum(axis=1).mean()


def test_questions_match_taxonomy(synth_dir):
    tax = Taxonomy.from_json(synth_dir / "taxonomy.json")
    records = read_questions(synth_dir / "questions_random.jsonl")
    assert len(records) == 72
    for rec in records:
        path = tax.path(rec.label)
        assert [normalize_label(t) for t in rec.truths] == [normalize_label(n) for n in path]
        for level, (truth, options) in enumerate(zip(rec.truths, rec.choices)):
            assert truth in options
            assert set(options) <= set(tax.nodes_at(level))
            assert len(options) == min(4, CLASSES_PER_LEVEL[level])
    assert main(["data", "check", "--taxonomy", str(synth_dir / "taxonomy.json"),
                 "--questions", str(synth_dir / "questions_random.jsonl")]) == 0


def test_cli_and_rerun(tmp_path, capsys):
    out = tmp_path / "set"
    argv = ["data", "synth", "--out", str(out), "--images-per-leaf", "4", "--image-size", "48", "--seed", "3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "96 images of 24 leaves (train 48, val 24, test 24)" in printed
    assert f"taxonomy: {out / 'taxonomy.json'}" in printed
    assert len(list((out / "images").glob("*.png"))) == 96
    with Image.open(next((out / "images").glob("*.png"))) as im:
        assert im.size == (48, 48)
    # a rerun with fewer images leaves no stale ones behind
    assert main(argv[:5] + ["3", "--image-size", "48"]) == 0
    assert len(list((out / "images").glob("*.png"))) == 72
    assert len((out / "images.jsonl").read_text().splitlines()) == 72


def test_refuses_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(HierError) as err:
        make_synthetic(tmp_path, images_per_leaf=3, image_size=48)
    assert str(err.value) == f"{tmp_path}: not empty and not a synthetic set (no meta.json); choose an empty directory"
    assert main(["data", "synth", "--out", str(tmp_path), "--images-per-leaf", "2"]) == 2
