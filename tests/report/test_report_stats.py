"""Report statistics: `value [low, high]` cells, chance, correlation interval/p, too few models, CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from hiertrain.cli.main import main
from hiertrain.metrics.correlation import correlation_test
from hiertrain.report.build import build_report, collect_runs, write_report


def _eval_run(root: Path, name: str, model: str, mode: str, hca: float, **meta) -> Path:
    d = root / name
    d.mkdir(parents=True)
    info = {"kind": "eval", "model_name": model, "dataset": "cub", "questions": "/data/cub.jsonl",
            "questions_sha256": "sha", "mode": mode, "prompt_variant": 0, "answer": "logits", "seed": 0,
            "split": "test", "created": f"2026-01-0{len(name) % 9 + 1}T00:00:00+00:00", **meta}
    (d / "run.json").write_text(json.dumps(info))
    metrics = {"hca": hca, "leaf_accuracy": 0.8, "per_level_accuracy": [0.9, 0.6], "level_names": ["order", "family"],
               "point_overlap": 0.7, "strict_point_overlap": 0.5, "top_overlap": 0.25, "hierarchical_f1": 0.6,
               "unparseable_rate": 0.0, "num_samples": 50,
               "intervals": {"method": "percentile bootstrap over images", "ci": 0.95, "bootstrap": 1000, "seed": 0,
                             "hca": [hca - 0.1, hca + 0.05], "leaf_accuracy": [0.7, 0.9],
                             "per_level_accuracy": [[0.85, 0.95], None], "point_overlap": [0.6, 0.8],
                             "strict_point_overlap": [0.4, 0.6], "top_overlap": [0.2, 0.3]},
               "chance": {"hca": 0.125, "leaf_accuracy": 0.25, "per_level_accuracy": [0.5, 0.25]}}
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


def _study(root: Path, n_models: int) -> Path:
    for k in range(n_models):
        _eval_run(root, f"m{k}-img", f"m{k}", "image", 0.1 + 0.1 * k)
        _eval_run(root, f"m{k}-txt", f"m{k}", "text", 0.2 + 0.15 * k + 0.01 * (k % 2))
    return root


def test_tables_show_value_with_interval_and_chance(tmp_path: Path) -> None:
    report = build_report(collect_runs([_study(tmp_path / "runs", 3)]))
    md = write_report(report, tmp_path / "out").read_text()
    # m1: HCA 20.00 [10.00, 25.00], leaf 80.00 [70.00, 90.00], text HCA 35.00 [25.00, 40.00], chance 12.50
    assert "| m1 | cub | 20.00 [10.00, 25.00] | 80.00 [70.00, 90.00] | 36.00 [26.00, 41.00] | 12.50 | 50 | 0 |" in md
    # per level: order has an interval, family had none (no samples resampled there)
    assert "| m1 | cub | image | 90.00 [85.00, 95.00] | 60.00 | 20.00 [10.00, 25.00] | 12.50 |" in md
    row = next(r for r in report.tables["per_level"] if r["model"] == "m1" and r["mode"] == "image")
    assert row["chance_levels"] == {"order": 50.0, "family": 25.0}
    # fewer than 4 models: stated, not a number
    assert "too few models (n=3 < 4)" in md
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["correlation"][0]["too_few"] is True and data["correlation"][0]["p_value"] is None
    assert all("created" not in r for r in data["runs"])


def test_correlation_interval_and_permutation_p() -> None:
    # 5 models on a line: exact permutation p = 2/120 (the identity and the reversal reach |r| = 1)
    out = correlation_test([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 4.0, 6.0, 8.0, 10.0])
    assert out["p_value"] == pytest.approx(round(2 / 120, 4)) and not out["too_few"]
    assert out["pearson_interval"] == [1.0, 1.0]
    noisy = correlation_test([1, 2, 3, 4, 5, 6, 7, 8, 9], [2, 1, 4, 3, 6, 5, 8, 9, 7])  # 9! > 10000: sampled
    low, high = noisy["pearson_interval"]
    assert 0 < low < 0.88 < high <= 1 and 0 < noisy["p_value"] < 0.05
    assert "random pairings" in noisy["method"]
    assert correlation_test([1, 2, 3], [1, 2, 3])["too_few"] is True
    assert correlation_test([1, 2, 3, 4], [3, 1, 2, 4]) == correlation_test([1, 2, 3, 4], [3, 1, 2, 4])


def test_enough_models_give_interval_and_p_in_the_report(tmp_path: Path) -> None:
    report = build_report(collect_runs([_study(tmp_path / "runs", 5)]))
    (corr,) = report.correlation
    assert corr["n"] == 5 and corr["pearson"] > 0.99 and corr["p_value"] is not None
    md = write_report(report, tmp_path / "out").read_text()
    low, high = corr["pearson_interval"]
    assert f"| cub | 5 | {corr['pearson']:.2f} [{low:.2f}, {high:.2f}] | {corr['p_value']:.2f} |" in md


def test_report_csv_leaderboard(tmp_path: Path, capsys) -> None:
    runs = _study(tmp_path / "runs", 2)
    out = tmp_path / "out"
    assert main(["report", str(runs), "--out", str(out), "--csv"]) == 0
    assert "leaderboard:" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert [(r["model"], r["mode"]) for r in rows] == [("m0", "image"), ("m0", "text"), ("m1", "image"), ("m1", "text")]
    first = rows[0]
    assert first["dataset"] == "cub" and first["protocol"] == "answer=logits variant=0 split=test"
    assert (first["hca"], first["hca_low"], first["hca_high"]) == ("10.0", "0.0", "15.0")
    assert first["chance_hca"] == "12.5" and first["ci"] == "0.95" and first["samples"] == "50"
    custom = tmp_path / "board.csv"
    assert main(["report", str(runs), "--out", str(out), "--csv", str(custom)]) == 0
    assert custom.read_text() == (out / "leaderboard.csv").read_text()


def test_two_reports_of_the_same_runs_are_byte_identical(tmp_path: Path) -> None:
    runs = _study(tmp_path / "runs", 4)
    for out in ("a", "b"):
        write_report(build_report(collect_runs([runs])), tmp_path / out)
    assert (tmp_path / "a" / "report.json").read_bytes() == (tmp_path / "b" / "report.json").read_bytes()
