"""`hiertrain score` and `data check|questions` never import torchmetrics, lightning or
transformers (issue 24: importing torchmetrics alone cost 4.7 s of every start-up)."""

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


def test_score_imports_no_training_stack(files) -> None:
    assert _probe(["score", str(files["preds"]), "--bootstrap", "10"]) == {"rc": 0, "heavy": []}


def test_data_commands_import_no_training_stack(files) -> None:
    check = _probe(["data", "check", "--taxonomy", str(files["taxonomy"]), "--questions", str(files["bank"])])
    assert check["heavy"] == [] and check["rc"] in (0, 1)
    made = _probe(["data", "questions", "--taxonomy", str(files["taxonomy"]), "--images", str(files["images"]),
                   "--out", str(files["out"])])  # fmt: skip
    assert made == {"rc": 0, "heavy": []}
