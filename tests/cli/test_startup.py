"""`hiertrain score`, `compare`, `report` and `data check|questions` never import torchmetrics,
lightning or transformers (issue 24: importing torchmetrics alone cost 4.7 s of every start-up)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torchmetrics", "lightning", "pytorch_lightning", "transformers")

_PROBE = """
import contextlib, io, json, sys
from hiertrain.cli.main import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "heavy": [m for m in HEAVY if m in sys.modules]}))
"""


def _probe(argv: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    code = f"HEAVY = {HEAVY!r}\n" + _PROBE
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("startup")
    levels = [{"level": k, "name": f"r{k}", "truth": "a", "options": ["a", "b"], "reply": "A", "letter": "A",
               "predicted": "a", "correct": True, "asked": True} for k in (1, 2)]  # fmt: skip
    preds = folder / "predictions.jsonl"
    preds.write_text("".join(json.dumps({"id": i, "mode": "image", "levels": levels}) + "\n" for i in range(5)))
    taxonomy = folder / "taxonomy.json"
    taxonomy.write_text(json.dumps({"x": ["r", "x"], "y": ["r", "y"], "z": ["q", "z"]}))
    bank = folder / "bank.jsonl"
    bank.write_text(json.dumps({"image": "1.jpg", "label": "x", "split": "test", "level1": "r",
                                "choices_level1": ["r", "q"], "level2": "x", "choices_level2": ["x", "y"]}) + "\n")  # fmt: skip
    images = folder / "images.jsonl"
    images.write_text(json.dumps({"image": "1.jpg", "label": "x", "split": "test"}) + "\n")
    return {"preds": preds, "taxonomy": taxonomy, "bank": bank, "images": images, "out": folder / "q.jsonl"}


@pytest.mark.slow
def test_score_imports_no_training_stack(files) -> None:
    assert _probe(["score", str(files["preds"]), "--bootstrap", "10"]) == {"rc": 0, "heavy": []}


def test_data_commands_import_no_training_stack(files) -> None:
    check = _probe(["data", "check", "--taxonomy", str(files["taxonomy"]), "--questions", str(files["bank"])])
    assert check["heavy"] == [] and check["rc"] in (0, 1)
    made = _probe(["data", "questions", "--taxonomy", str(files["taxonomy"]), "--images", str(files["images"]),
                   "--out", str(files["out"])])  # fmt: skip
    assert made == {"rc": 0, "heavy": []}


def _eval_run(root: Path, name: str, picks: list[bool]) -> Path:
    """A finished evaluation run directory (run.json, predictions, metrics) of 2-level samples."""
    run = root / name
    run.mkdir()
    (run / "run.json").write_text(json.dumps({
        "kind": "eval", "model": f"/m/{name}", "model_name": name, "dataset": "d", "questions": "q.jsonl",
        "questions_sha256": "abc", "mode": "image", "prompt_variant": 0, "answer": "logits", "seed": 0,
        "num_samples": len(picks), "skipped": 0, "level_names": ["r1", "r2"],
    }))  # fmt: skip
    lines = []
    for i, right in enumerate(picks):
        levels = [{"level": k, "name": f"r{k}", "truth": "a", "options": ["a", "b"], "reply": "A" if right else "B",
                   "letter": "A" if right else "B", "predicted": "a" if right else "b", "correct": right, "asked": True}
                  for k in (1, 2)]  # fmt: skip
        lines.append(json.dumps({"id": i, "image": f"{i}.png", "label": "a", "split": "test", "mode": "image", "levels": levels}))
    (run / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    hca = sum(picks) / len(picks)
    (run / "metrics.json").write_text(json.dumps({
        "hca": hca, "leaf_accuracy": hca, "per_level_accuracy": [hca, hca], "level_names": ["r1", "r2"],
        "point_overlap": hca, "strict_point_overlap": hca, "top_overlap": hca, "hierarchical_f1": hca,
        "unparseable_rate": 0.0, "num_samples": len(picks),
    }))  # fmt: skip
    return run


@pytest.mark.slow
def test_compare_and_report_import_no_training_stack(tmp_path) -> None:
    a = _eval_run(tmp_path, "a", [True, False, True, True, False])
    b = _eval_run(tmp_path, "b", [True, True, True, False, False])
    assert _probe(["compare", str(a), str(b), "--bootstrap", "10"]) == {"rc": 0, "heavy": []}
    assert _probe(["report", str(a), str(b), "--out", str(tmp_path / "report")]) == {"rc": 0, "heavy": []}
    assert (tmp_path / "report" / "report.md").is_file()
