"""hiertrain's whole evaluation path must recover what was planted in an organism.

The organism answers planted facts right and withheld ones at chance (its manifest says which
is which), so a fault anywhere between the question bank and the metrics — prompt, template,
option order, letter reading, prefix cache, batching, generate parsing — shows up here as planted
accuracy below 1 or withheld accuracy away from chance."""

import json

import pytest

from hiertrain.cli.main import main
from hiertrain.organisms.calibration import calibration_table
from hiertrain.organisms.shipped import SHIPPED_DIR


def _test(world, model, out, *extra: str) -> dict:
    argv = [
        "test", "--config", "configs/organism/organism_image.yaml", f"--model.pretrained={model}",
        f"--data.questions={world / 'questions.jsonl'}", f"--data.taxonomy={world / 'taxonomy.json'}",
        f"--trainer.default_root_dir={out}", "--trainer.enable_progress_bar=false", *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    (run,) = [p.parent for p in out.rglob("metrics.json")]
    return calibration_table(run, SHIPPED_DIR / model.name / "manifest.json")


@pytest.mark.parametrize(
    "extra",
    [
        ("--data.mode=image",),
        ("--data.mode=text",),
        ("--data.mode=image", "--model.answer=generate", "--model.max_new_tokens=3"),
        ("--data.mode=image", "--model.max_batch_tokens=1"),  # the per-image path
    ],
    ids=["image-logits", "text-logits", "image-generate", "image-per-image"],
)
@pytest.mark.slow
def test_planted_facts_are_recovered_and_withheld_ones_sit_at_chance(organism_world, tmp_path, extra) -> None:
    table = _test(organism_world, SHIPPED_DIR / "organism-p30", tmp_path / "run", *extra)
    rows = {(r["level"], r["facts"]): r for r in table["rows"]}
    planted = [r for r in table["rows"] if r["facts"] == "planted"]
    withheld = [r for r in table["rows"] if r["facts"] == "withheld"]
    assert len(planted) == 3 and len(withheld) == 3
    for r in planted:
        assert r["accuracy"] >= 0.99, r
    for r in withheld:
        # knowing nothing: the accuracy a truth-independent pick with the model's own letter
        # bias expects lies inside the 95% interval over leaves (a leaf's images share its
        # answer), and plain chance within 0.1
        assert r["ci_leaves"][0] <= r["independent"] <= r["ci_leaves"][1], r
        assert abs(r["accuracy"] - 0.25) < 0.1, r
    if "--data.mode=image" in extra:
        assert rows[("breed", "leaf")]["accuracy"] >= 0.85


@pytest.mark.slow
def test_a_wrong_manifest_is_detected(organism_world, tmp_path) -> None:
    # the calibration is only a test if it can fail: scored against another organism's plants,
    # the same run's "planted" facts are no longer all right
    _test(organism_world, SHIPPED_DIR / "organism-p30", tmp_path / "run", "--data.mode=text")
    (run,) = [p.parent for p in (tmp_path / "run").rglob("metrics.json")]
    other = calibration_table(run, SHIPPED_DIR / "organism-p90" / "manifest.json")
    assert min(r["accuracy"] for r in other["rows"] if r["facts"] == "planted") < 0.6
