"""`hiertrain compare RUN_A RUN_B`: paired results, and refusal when the question sets differ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hiertrain.cli.main import main
from hiertrain.core.errors import HierError
from hiertrain.core.predictions import LevelPrediction, SamplePrediction, write_predictions
from hiertrain.report.compare import compare_runs


def _run_dir(root: Path, name: str, leaf_right: list[bool], mode: str = "image", sha: str = "abc",
             ids: list[int] | None = None, deep_asked: bool = True) -> Path:
    d = root / name
    d.mkdir(parents=True)
    meta = {"kind": "eval", "model_name": name, "dataset": "synthetic", "questions": "q.jsonl",
            "questions_sha256": sha, "mode": mode, "level_names": ["family", "shape"]}
    (d / "run.json").write_text(json.dumps(meta))
    preds = []
    for i, right in zip(ids or range(len(leaf_right)), leaf_right):
        levels = [
            LevelPrediction(1, "f", ["f", "g"], "A", "A", "f", True, True, "family"),
            LevelPrediction(2, "s", ["s", "t", "u"], "A", "A", "s" if right else "t", right, deep_asked or i > 0, "shape"),
        ]
        preds.append(SamplePrediction(i, levels, f"{i}.png", "s", "test", mode))
    write_predictions(preds, d / "predictions.jsonl")
    return d


A = [True] * 6 + [True] * 2 + [False] * 8 + [False] * 4
B = [True] * 6 + [False] * 2 + [True] * 8 + [False] * 4


def test_compare_cli_table_and_json(tmp_path: Path, capsys) -> None:
    a, b = _run_dir(tmp_path, "base", A), _run_dir(tmp_path, "tuned", B)
    assert main(["compare", str(a), str(b), "--bootstrap", "300", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    hca = result["metrics"]["hca"]
    assert hca["difference"] == pytest.approx(0.3) and hca["mcnemar"]["p"] == pytest.approx(2 * 56 / 1024)
    assert result["num_samples"] == 20 and result["bootstrap"] == 300
    assert main(["compare", str(a), str(b), "--bootstrap", "300"]) == 0
    table = capsys.readouterr().out
    low, high = hca["interval"]
    assert f"+30.00 [{100 * low:+.2f}, {100 * high:+.2f}]" in table
    assert "p=0.1094 (A only 2, B only 8)" in table


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"sha": "other"}, "different question files"),
        ({"mode": "text"}, "different modes"),
        ({"ids": list(range(1, 21))}, "ids are in only one"),
        ({"deep_asked": False}, "sample 0: base asked levels [1, 2], other asked [1]"),
    ],
)
def test_different_question_sets_refused(tmp_path: Path, kwargs: dict, reason: str, capsys) -> None:
    a = _run_dir(tmp_path, "base", A)
    b = _run_dir(tmp_path, "other", B, **kwargs)
    with pytest.raises(HierError, match="cannot compare") as err:
        compare_runs(a, b, n_boot=10)
    assert reason in str(err.value) and "\n" not in str(err.value)
    assert main(["compare", str(a), str(b)]) == 2
    assert reason in capsys.readouterr().err


def test_run_without_predictions_refused(tmp_path: Path) -> None:
    a = _run_dir(tmp_path, "base", A)
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "run.json").write_text("{}")
    with pytest.raises(HierError, match="no predictions.jsonl"):
        compare_runs(a, tmp_path / "probe")
