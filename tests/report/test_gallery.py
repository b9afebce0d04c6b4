"""The failure gallery: categories, captions, the worst level's confusion matrix, report.md/PNGs."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from hiertrain.metrics.predictions import LevelPrediction, SamplePrediction, write_predictions
from hiertrain.report.build import build_report, collect_runs, write_report
from hiertrain.report.gallery import caption_lines, category, confusion, pick_samples, worst_level

NAMES = ["genus", "species"]


def _sample(i: int, picks: list[str], truths: list[str], image: str | None = None) -> SamplePrediction:
    levels = [
        LevelPrediction(level=k + 1, name=NAMES[k], truth=t, options=[t, p], predicted=p, correct=p == t)
        for k, (t, p) in enumerate(zip(truths, picks))
    ]
    return SamplePrediction(id=i, levels=levels, image=image or f"img/{i}.png", label=truths[-1])


def test_categories_and_captions() -> None:
    right_leaf = _sample(0, ["Acer", "Quercus robur"], ["Quercus", "Quercus robur"])
    all_right = _sample(1, ["Quercus", "Quercus robur"], ["Quercus", "Quercus robur"])
    leaf_wrong = _sample(2, ["Quercus", "Acer rubrum"], ["Quercus", "Quercus robur"])
    assert [category(s) for s in (right_leaf, all_right, leaf_wrong)] == ["leaf_right_ancestor_wrong", "all_right", "leaf_wrong"]
    assert caption_lines(right_leaf) == [("genus: Quercus ✗", False), ("   → Acer", False), ("species: Quercus robur ✓", True)]
    picked = pick_samples([leaf_wrong, all_right, right_leaf, _sample(3, ["Quercus", "Acer"], ["Quercus", "Q"])], 1)
    assert [s.id for s in picked["leaf_wrong"]] == [2]  # first by id, capped


def test_worst_level_and_confusion_counts() -> None:
    samples = [
        _sample(0, ["Acer", "a1"], ["Quercus", "a1"]),
        _sample(1, ["Acer", "q1"], ["Quercus", "q1"]),
        _sample(2, ["Quercus", "q2"], ["Quercus", "q1"]),
        _sample(3, ["Acer", "a1"], ["Acer", "a1"]),
    ]
    assert worst_level(samples) == ("genus", 2)
    rows, cols, counts = confusion(samples, "genus")
    assert rows == cols == ["Acer", "Quercus"] and counts == [[1, 0], [2, 1]]
    rows, cols, counts = confusion(samples, "species", max_classes=1)  # a1 and q1 are equally frequent: a1
    assert rows == ["a1"] and counts == [[2]]


def test_report_draws_gallery_and_heatmap_per_image_run(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "m-synth-image"
    (run / "img").mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (64, 48), (40 * i, 100, 200)).save(run / "img" / f"{i}.png")
    truths = ["Quercus", "Quercus robur"]
    preds = [
        _sample(0, ["Acer", "Quercus robur"], truths), _sample(1, truths, truths), _sample(2, ["Quercus", "x"], truths),
        _sample(3, ["Acer", "Quercus robur"], truths), _sample(4, ["Quercus", "Quercus robur"], truths, image="img/gone.png"),
    ]  # fmt: skip
    write_predictions(preds, run / "predictions.jsonl")
    meta = {"kind": "eval", "model_name": "m", "dataset": "synth", "mode": "image", "answer": "logits",
            "questions": str(run / "q.jsonl"), "image_dir": str(run), "image_root_map": {}, "run_name": "m-synth-image"}
    (run / "run.json").write_text(json.dumps(meta))
    text = tmp_path / "runs" / "m-synth-text"  # text runs get no gallery
    text.mkdir()
    (text / "run.json").write_text(json.dumps({**meta, "mode": "text", "run_name": "m-synth-text"}))
    write_predictions(preds, text / "predictions.jsonl")
    out = tmp_path / "report"
    md = write_report(build_report(collect_runs([tmp_path / "runs"])), out, gallery=2).read_text()
    (entry,) = json.loads((out / "report.json").read_text())["gallery"]
    assert entry["counts"] == {"leaf_right_ancestor_wrong": 2, "all_right": 2, "leaf_wrong": 1}
    assert entry["missing_images"] == 1  # img/gone.png: drawn as a named placeholder, counted
    assert entry["confusion_level"] == "genus" and entry["confusion_errors"] == 2
    for png in (entry["gallery"], entry["confusion"]):
        assert (out / png).stat().st_size > 5000 and f"]({png})" in md
    assert "## Failure gallery" in md and "1 shown images not readable" in md
    assert not list(out.glob("gallery_m-synth-text*"))
    write_report(build_report(collect_runs([tmp_path / "runs"])), tmp_path / "none", gallery=0)
    assert not list((tmp_path / "none").glob("gallery_*.png"))
