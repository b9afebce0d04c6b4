"""`hiertrain compare RUN_A RUN_B`: paired results, and refusal when the question sets differ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hiertrain.cli.main import main
from hiertrain.base.errors import HierError
from hiertrain.metrics.predictions import LevelPrediction, SamplePrediction, write_predictions
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


def _toy_dir(root: Path, name: str, preds: list, taxonomy: str | None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    meta = {"kind": "eval", "model_name": name, "dataset": "toy", "questions": "q.jsonl", "questions_sha256": "toy",
            "mode": "image", "level_names": ["l1", "l2", "l3"], "taxonomy": taxonomy}  # fmt: skip
    (d / "run.json").write_text(json.dumps(meta))
    write_predictions(preds, d / "predictions.jsonl")
    return d


def test_compare_covers_the_severity_and_path_measures(tmp_path: Path, capsys) -> None:
    """A = the toy of tests/severity_toy.py; B = the same with sample 1 answered right throughout."""
    import copy

    from severity_toy import PREDS, TOY

    taxonomy = str(TOY.to_json(tmp_path / "toy.json"))
    fixed = copy.deepcopy(PREDS)
    for lv in fixed[1].levels:
        lv.predicted, lv.correct = lv.truth, True
    a, b = _toy_dir(tmp_path, "a", PREDS, taxonomy), _toy_dir(tmp_path, "b", fixed, taxonomy)
    result = compare_runs(a, b, n_boot=200)
    m = result["metrics"]
    # path consistency 3/6 -> 4/6; LCA depth of the wrong picks 5/8 -> (2 + 1 + 0 + 0 + 0)/5 = 3/5
    assert m["path_consistency"]["difference"] == pytest.approx(1 / 6)
    assert m["mistake_lca_depth"]["a"] == pytest.approx(5 / 8) and m["mistake_lca_depth"]["b"] == pytest.approx(3 / 5)
    assert m["mistake_distance"]["b"] == pytest.approx((2 + 4 + 2 + 4 + 6) / 5)
    # hP 8/17 -> 11/17 (three more right, nothing newly unparsed); conditional L2|L1 2/4 -> 3/5
    assert m["hierarchical_precision"]["b"] == pytest.approx(11 / 17)
    assert m["conditional_accuracy"][1]["b"] == pytest.approx(3 / 5) and m["conditional_accuracy"][0]["a"] is None
    assert result["taxonomy"] == taxonomy and "taxonomy_note" not in result
    assert main(["compare", str(a), str(b), "--bootstrap", "50"]) == 0
    table = capsys.readouterr().out
    assert "path_consistency" in table and "+16.67" in table
    assert "mistake_lca_depth" in table and "-0.03" in table  # 3/5 - 5/8 = -0.025

    # runs that name no taxonomy: the core measures, and a line saying why not the taxonomy ones
    plain_a, plain_b = _toy_dir(tmp_path / "p", "a", PREDS, None), _toy_dir(tmp_path / "p", "b", fixed, None)
    plain = compare_runs(plain_a, plain_b, n_boot=0)
    assert "path_consistency" not in plain["metrics"] and "no taxonomy given" in plain["taxonomy_note"]
    assert compare_runs(plain_a, plain_b, n_boot=0, taxonomy=taxonomy)["metrics"]["path_consistency"]["b"] == pytest.approx(4 / 6)
