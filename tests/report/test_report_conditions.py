"""`hiertrain report` with question conditions: mixed conditions refused, closed vs open side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hiertrain.base.errors import HierError
from hiertrain.report.build import build_report, collect_runs, write_report


def _run(root: Path, name: str, model: str, hca: float, leaf: float, **meta) -> Path:
    d = root / name
    d.mkdir(parents=True)
    info = {"kind": "eval", "model": f"/models/{model}", "model_name": model, "dataset": "cub",
            "questions": "/data/cub.jsonl", "questions_sha256": "sha-cub", "mode": "image",
            "prompt_variant": 0, "answer": "generate", "answer_parser": "strict", "seed": 0, "num_samples": 10, "skipped": 0}
    info.update(meta)
    (d / "run.json").write_text(json.dumps(info))
    metrics = {"hca": hca, "leaf_accuracy": leaf, "per_level_accuracy": [0.9, leaf], "level_names": ["order", "species"],
               "point_overlap": 0.5, "strict_point_overlap": 0.5, "top_overlap": 0.25, "hierarchical_f1": 0.6,
               "unparseable_rate": 0.0, "num_samples": 10}
    if meta.get("condition") == "open":
        metrics["open_set"] = {"asked": 20, "level_rate": 0.6, "ambiguous_rate": 0.05, "other_level_rate": 0.15, "none_rate": 0.2}
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


def test_mixed_conditions_are_refused_unless_allowed(tmp_path: Path) -> None:
    _run(tmp_path, "m1-plain", "m1", 0.5, 0.6)  # a run.json from before the field: plain
    _run(tmp_path, "m1-cot", "m1", 0.4, 0.5, condition="cot")
    with pytest.raises(HierError, match="m1-plain and m1-cot differ in condition: 'plain' vs 'cot'"):
        build_report(collect_runs([tmp_path]))
    report = build_report(collect_runs([tmp_path]), allow_mixed=True)
    assert any("condition" in d for d in report.differences)


def test_closed_and_open_runs_side_by_side(tmp_path: Path) -> None:
    _run(tmp_path, "m1-closed", "m1", 0.5, 0.6, answer="logits", condition="plain")
    _run(tmp_path, "m1-open", "m1", 0.1, 0.2, condition="open")
    _run(tmp_path, "m2-open", "m2", 0.3, 0.4, condition="open")
    report = build_report(collect_runs([tmp_path]))  # open runs are not mixed into the closed-set tables
    assert [r["model"] for r in report.tables["visual"]] == ["m1"]
    rows = {r["model"]: r for r in report.tables["open_set"]}
    assert rows["m1"]["closed_hca"] == 50.0 and rows["m1"]["open_hca"] == 10.0
    assert rows["m1"]["closed_leaf"] == 60.0 and rows["m1"]["open_leaf"] == 20.0
    assert rows["m1"]["open_named_other_level"] == 15.0 and rows["m1"]["open_named_none"] == 20.0
    assert rows["m2"]["closed_hca"] is None and rows["m2"]["open_hca"] == 30.0  # no closed twin
    md = write_report(report, tmp_path / "out").read_text()
    assert "## Closed-set vs open-set (%)" in md
    assert "| m1 | cub | image | 50.00 | 10.00 | 60.00 | 20.00 | 15.00 | 20.00 | 5.00 |" in md


def test_open_runs_with_different_settings_are_refused(tmp_path: Path) -> None:
    _run(tmp_path, "m1-open", "m1", 0.1, 0.2, condition="open")
    _run(tmp_path, "m2-open", "m2", 0.3, 0.4, condition="open", prompt_variant=1)
    with pytest.raises(HierError, match="differ in prompt_variant"):
        build_report(collect_runs([tmp_path]))
