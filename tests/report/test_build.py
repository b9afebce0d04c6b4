"""`hiertrain report`: tables from run directories, the protocol check, correlation, plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hiertrain.cli.main import main
from hiertrain.base.errors import HierError
from hiertrain.report.build import build_report, collect_runs, write_report


def _eval_run(root: Path, name: str, model: str, dataset: str, mode: str, hca: float, leaf: float | None,
              per_level: list[float], **meta) -> Path:
    d = root / name
    d.mkdir(parents=True)
    info = {"kind": "eval", "model": f"/models/{model}", "model_name": model, "dataset": dataset,
            "questions": f"/data/{dataset}.jsonl", "questions_sha256": f"sha-{dataset}", "mode": mode,
            "prompt_variant": 0, "answer": "logits", "seed": 0, "num_samples": 10, "skipped": 0}
    info.update(meta)
    (d / "run.json").write_text(json.dumps(info))
    metrics = {"hca": hca, "leaf_accuracy": leaf, "per_level_accuracy": per_level,
               "level_names": ["order", "family", "genus", "species"][: len(per_level)],
               "point_overlap": sum(per_level) / len(per_level), "strict_point_overlap": 0.5,
               "top_overlap": 0.25, "hierarchical_f1": 0.6, "unparseable_rate": 0.0, "num_samples": 10}
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


@pytest.fixture()
def runs_root(tmp_path: Path) -> Path:
    # Three models on one dataset: text HCA (x) and visual HCA (y) with known correlations.
    # x = 0.2, 0.4, 0.6; y = 0.1, 0.3, 0.2 -> ranks x 1,2,3 and y 1,3,2 -> Spearman 0.5.
    # Pearson: dx = -0.2,0,0.2; dy = -0.1,0.1,0 -> sum dxdy = 0.02; |dx| = sqrt(0.08); |dy| = sqrt(0.02)
    # -> r = 0.02 / sqrt(0.0016) = 0.5.
    for model, x, y in (("m1", 0.2, 0.1), ("m2", 0.4, 0.3), ("m3", 0.6, 0.2)):
        _eval_run(tmp_path, f"{model}-img", model, "cub", "image", y, 0.8, [0.9, 0.8, 0.7, 0.8])
        _eval_run(tmp_path, f"{model}-txt", model, "cub", "text", x, None, [0.9, 0.7, 0.5])
    return tmp_path


def test_tables_and_correlation(runs_root: Path) -> None:
    report = build_report(collect_runs([runs_root]))
    visual = {r["model"]: r for r in report.tables["visual"]}
    assert set(visual) == {"m1", "m2", "m3"}
    assert visual["m2"]["hca"] == 30.0 and visual["m2"]["text_hca"] == 40.0 and visual["m2"]["leaf_accuracy"] == 80.0
    (corr,) = report.correlation
    assert corr["n"] == 3
    assert corr["pearson"] == pytest.approx(0.5, abs=1e-4)
    assert corr["spearman"] == pytest.approx(0.5, abs=1e-4)
    levels = [r for r in report.tables["per_level"] if r["model"] == "m1" and r["mode"] == "text"][0]["levels"]
    assert levels == {"order": 90.0, "family": 70.0, "genus": 50.0}


def test_pooled_correlation_needs_two_datasets(runs_root: Path) -> None:
    for model, x, y in (("m1", 0.3, 0.3), ("m2", 0.5, 0.4), ("m3", 0.7, 0.6)):
        _eval_run(runs_root, f"{model}-food-img", model, "food", "image", y, 0.9, [0.9, 0.9, 0.9])
        _eval_run(runs_root, f"{model}-food-txt", model, "food", "text", x, None, [0.9, 0.9])
    report = build_report(collect_runs([runs_root]))
    by = {c["dataset"]: c for c in report.correlation}
    assert set(by) == {"cub", "food", "pooled"}
    assert by["pooled"]["n"] == 6
    assert by["food"]["pearson"] > 0.9


def test_mixed_protocols_refused_and_named(runs_root: Path) -> None:
    _eval_run(runs_root, "m4-img", "m4", "cub", "image", 0.5, 0.9, [1, 1, 1, 1], prompt_variant=3)
    _eval_run(runs_root, "m5-img", "m5", "cub", "image", 0.5, 0.9, [1, 1, 1, 1], questions_sha256="other")
    with pytest.raises(HierError) as err:
        build_report(collect_runs([runs_root]))
    msg = str(err.value)
    assert "m4-img" in msg and "prompt_variant" in msg and "3" in msg
    assert "m5-img" in msg and "different question files" in msg
    report = build_report(collect_runs([runs_root]), allow_mixed=True)
    assert len(report.differences) == 2


def test_mixed_backends_refused_unless_allowed(runs_root: Path, capsys) -> None:
    # runs_root's runs predate the field: they read as in-process ("transformers") runs
    _eval_run(runs_root, "m4-img", "m4", "cub", "image", 0.5, 0.9, [1, 1, 1, 1], backend="transformers")
    build_report(collect_runs([runs_root]))
    _eval_run(runs_root, "m5-img", "m5", "cub", "image", 0.5, 0.9, [1, 1, 1, 1], backend="served")
    with pytest.raises(HierError) as err:
        build_report(collect_runs([runs_root]))
    assert "m5-img" in str(err.value) and "backend" in str(err.value) and "'served'" in str(err.value)
    assert main(["report", str(runs_root), "--out", str(runs_root / "out")]) == 2
    assert "--allow-mixed" in capsys.readouterr().err
    report = build_report(collect_runs([runs_root]), allow_mixed=True)
    assert [d for d in report.differences if "backend" in d] == report.differences and len(report.differences) == 1


def test_write_report_files_and_cli(runs_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    assert main(["report", str(runs_root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "report.md" in printed and "| m2 | cub | 30.00 | 80.00 | 40.00 |" in printed
    md = (out / "report.md").read_text()
    for png in ("hca_vs_leaf.png", "per_level_accuracy.png", "text_vs_visual_hca.png"):
        assert (out / png).stat().st_size > 1000
        assert f"]({png})" in md
    data = json.loads((out / "report.json").read_text())
    assert data["correlation"][0]["n"] == 3


def test_probe_and_lora_tables(tmp_path: Path) -> None:
    d = tmp_path / "probe"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"kind": "probe", "model_name": "tiny", "dataset": "synthetic", "side": "visual"}))
    (d / "probes.json").write_text(json.dumps({
        "side": "visual", "sites": ["vision", "projector", "llm.0"], "level_names": ["a", "b"],
        "test": {"accuracy": {"vision": [1.0, 0.5], "projector": [0.9, 0.4], "llm.0": [0.5, 0.25]},
                 "hca": {"vision": 0.5, "projector": 0.4, "llm.0": 0.2}}}))
    l = tmp_path / "lora"
    l.mkdir()
    (l / "run.json").write_text(json.dumps({"kind": "lora", "model_name": "tiny", "dataset": "synthetic"}))
    (l / "before_after.json").write_text(json.dumps({"rows": [
        {"dataset": "synthetic", "mode": "image", "before": {"hca": 0.1, "leaf_accuracy": 0.3},
         "after": {"hca": 0.6, "leaf_accuracy": 0.7}}]}))
    report = build_report(collect_runs([tmp_path]))
    probes = {r["site"]: r for r in report.tables["probes"]}
    assert probes["projector"]["levels"] == {"a": 90.0, "b": 40.0} and probes["llm.0"]["hca"] == 20.0
    (row,) = report.tables["lora"]
    assert row["hca_before"] == 10.0 and row["hca_after"] == 60.0 and row["hca_delta"] == 50.0
    md = write_report(report, tmp_path / "out").read_text()
    assert "LoRA tuning" in md and "probes_probe.png" in md


def test_no_runs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HierError, match="no run.json found"):
        collect_runs([tmp_path])


def test_different_splits_of_one_file_are_a_protocol_difference(runs_root: Path) -> None:
    _eval_run(runs_root, "m6-img", "m6", "cub", "image", 0.5, 0.9, [1, 1, 1, 1], split="train")
    with pytest.raises(HierError, match=r"m6-img and m1-img \(cub\) score different splits: 'train' vs None"):
        build_report(collect_runs([runs_root]))


def test_mixed_answer_parsers_refused_unless_allowed(tmp_path: Path) -> None:
    _eval_run(tmp_path, "old-gen", "m1", "cub", "image", 0.5, 0.9, [1, 1, 1, 1], answer="generate")  # no key: strict
    _eval_run(tmp_path, "strict-gen", "m2", "cub", "image", 0.5, 0.9, [1, 1, 1, 1], answer="generate",
              answer_parser="strict")
    assert build_report(collect_runs([tmp_path])).differences == []
    _eval_run(tmp_path, "paper-gen", "m3", "cub", "image", 0.5, 0.9, [1, 1, 1, 1], answer="generate",
              answer_parser="paper")
    with pytest.raises(HierError, match=r"paper-gen and old-gen differ in answer_parser: 'paper' vs 'strict'") as err:
        build_report(collect_runs([tmp_path]))
    assert "\n" not in str(err.value)
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep")]) == 2
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep"), "--allow-mixed"]) == 0


@pytest.mark.parametrize(
    "field, value",
    [("hca", "high"), ("per_level_accuracy", [0.5, "x"]), ("num_samples", True), ("mistake_lca_depth", "deep"),
     ("mistake_severity", [1, "two"]), ("conditional_accuracy", 0.5)],
)  # fmt: skip
def test_a_metrics_field_of_the_wrong_type_is_one_line_naming_file_and_field(runs_root: Path, capsys, field, value) -> None:
    # issue 22 item 11: `"hca": "high"` in a metrics.json was a traceback inside a table
    path = runs_root / "m2-img" / "metrics.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    assert main(["report", str(runs_root), "--out", str(runs_root / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"hiertrain: {path.resolve()}: field '{field}' is {json.dumps(value)}")


def test_an_unfinished_run_is_named_with_what_is_missing(runs_root: Path, tmp_path: Path, capsys) -> None:
    # issue 22 item 20: a run dir without metrics.json was in the header, with no row and no note
    killed = _eval_run(runs_root, "m4-img", "m4", "cub", "image", 0.5, 0.9, [1, 1, 1, 1])
    (killed / "metrics.json").unlink()
    (killed / "predictions.rank0.jsonl").write_text('{"id": 0}\n{"id": 1}\n')
    probe = runs_root / "probe-run"
    probe.mkdir()
    (probe / "run.json").write_text(json.dumps({"kind": "probe", "model_name": "tiny", "dataset": "synthetic"}))
    out = tmp_path / "report"
    assert main(["report", str(runs_root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = [
        "m4-img: unfinished (no metrics.json; 2 prediction lines streamed); rerun its command to finish it",
        "probe-run: unfinished (no probes.json); rerun its command to finish it",
    ]
    md = (out / "report.md").read_text()
    for line in lines:
        assert f"- {line}" in md and f"not in the tables: {line}" in printed
    assert json.loads((out / "report.json").read_text())["unfinished"] == lines
    assert "| m4 |" not in md  # still no row: nothing was scored

def test_lora_run_named_after_its_root_not_checkpoints(tmp_path: Path) -> None:
    """A LoRA run.json sits beside its adapter in `<root>/checkpoints`: the report names the run root."""
    ckpt = tmp_path / "lora" / "synth_text" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "run.json").write_text(json.dumps({"kind": "lora", "model_name": "tiny", "dataset": "synthetic"}))
    (ckpt / "before_after.json").write_text(json.dumps({"rows": [
        {"dataset": "synthetic", "mode": "text", "before": {"hca": 0.1}, "after": {"hca": 0.3}}]}))
    report = build_report(collect_runs([tmp_path]))
    assert [r["run"] for r in report.tables["lora"]] == ["synth_text"]
    md = write_report(report, tmp_path / "out").read_text()
    assert "checkpoints" not in md and "1 runs: synth_text" in md


def _toy_run(root: Path, name: str, model: str, taxonomy) -> Path:
    """An evaluation run directory of the toy predictions (tests/severity_toy.py) finalized for real."""
    from hiertrain.runs.eval_outputs import RunDirectory
    from severity_toy import PREDS

    meta = {"model": f"/models/{model}", "model_name": model, "dataset": "toy", "questions": "/data/toy.jsonl",
            "questions_sha256": "sha-toy", "mode": "image", "answer": "logits", "prompt_variant": 0, "seed": 0}  # fmt: skip
    run = RunDirectory(root / name)
    run.claim(meta)
    for p in PREDS:
        run.append(p)
    run.finalize([p.id for p in PREDS], ["l1", "l2", "l3"], 3, meta, taxonomy)
    return run.path


def test_severity_tables_and_plots(tmp_path: Path) -> None:
    from severity_toy import TOY

    _toy_run(tmp_path / "runs", "with", "m1", TOY)
    _toy_run(tmp_path / "runs", "without", "m2", None)
    report = build_report(collect_runs([tmp_path / "runs"]))
    rows = {r["model"]: r for r in report.tables["severity"]}
    # the toy's hand values: hP 8/17, hR 8/18, path 3/6, LCA 5/8, distance 26/8, histogram 4, 3, 1 of 8
    assert rows["m1"]["hierarchical_precision"] == 47.06 and rows["m1"]["hierarchical_recall"] == 44.44
    assert rows["m1"]["path_consistency"] == 50.0 and rows["m1"]["mistake_lca_depth"] == 0.625
    assert rows["m1"]["mistake_distance"] == 3.25 and rows["m1"]["severity"] == [50.0, 37.5, 12.5]
    assert rows["m1"]["mistakes_placed"] == 8 and rows["m1"]["mistakes_unplaced"] == 2 and rows["m1"]["note"] is None
    assert rows["m2"]["path_consistency"] is None and "no taxonomy given" in rows["m2"]["note"]
    assert rows["m2"]["hierarchical_precision"] == 47.06  # needs no taxonomy
    conditional = {r["model"]: r for r in report.tables["conditional"]}
    assert conditional["m1"]["levels"] == {"l2": 50.0, "l3": 50.0}

    md = write_report(report, tmp_path / "out", gallery=0).read_text()
    assert "## Hierarchical precision / recall, path consistency, mistake severity" in md
    assert "| m1 | toy | image | 47.06" in md and "- without: no taxonomy given" in md
    assert "| m1 | toy | image | 50.00 | 37.50 | 12.50 |" in md  # the severity histogram table
    assert "## Conditional accuracy (%)" in md
    for png in ("mistake_severity.png", "hierarchical_precision_recall.png", "path_consistency.png", "conditional_accuracy.png"):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG" and f"({png})" in md


def test_leaderboard_has_the_precision_recall_and_path_columns(tmp_path: Path) -> None:
    from hiertrain.report.leaderboard import leaderboard_rows
    from severity_toy import TOY

    _toy_run(tmp_path / "runs", "with", "m1", TOY)
    _toy_run(tmp_path / "runs", "without", "m2", None)
    rows = {r["model"]: r for r in leaderboard_rows(collect_runs([tmp_path / "runs"]))}
    assert rows["m1"]["hierarchical_precision"] == 47.06 and rows["m1"]["path_consistency"] == 50.0
    assert rows["m1"]["path_consistency_low"] is not None
    assert rows["m2"]["path_consistency"] is None and rows["m2"]["hierarchical_recall"] == 44.44
