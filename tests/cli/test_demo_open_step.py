"""The demo's open-set step: its config (the closed-set Qwen image config + OPEN_SET_OVERRIDES)
runs, and the report puts its numbers beside the closed-set run of the same tiny model."""

from __future__ import annotations

import json
from pathlib import Path

from hiertrain.cli.commands.demo import OPEN_SET_OVERRIDES, _configs_dir, _resolve
from hiertrain.cli.main import main
from hiertrain.report.build import build_report, collect_runs


def test_open_set_step_and_its_report_table(tiny_qwen: Path, synth_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    (out / "tiny").mkdir(parents=True)
    (out / "synth").symlink_to(synth_dir)
    (out / "tiny" / "qwen2_5_vl").symlink_to(tiny_qwen)
    config = _resolve(_configs_dir() / "demo" / "qwen_image.yaml", out, tmp_path)
    for extra in (["--data.name=synthetic"], list(OPEN_SET_OVERRIDES)):  # the demo's closed step, then the open one
        assert main(["test", "--config", str(config), *extra, "--data.limit=2", "--wandb=false"]) in (0, None)
    runs = collect_runs([out / "eval"])
    by_condition = {r.condition: r for r in runs}
    assert set(by_condition) == {"plain", "open"}
    open_run = by_condition["open"]
    assert open_run.meta["answer"] == "generate" and open_run.path.name.endswith("-open")
    assert "open_set" in open_run.metrics
    (row,) = build_report(runs).tables["open_set"]
    assert row["closed_run"] == by_condition["plain"].path.name and row["open_run"] == open_run.path.name
    assert row["closed_hca"] == round(100 * by_condition["plain"].metrics["hca"], 2)
    assert row["open_hca"] == round(100 * open_run.metrics["hca"], 2)
    first = json.loads((open_run.path / "predictions.jsonl").read_text().splitlines()[0])
    assert first["levels"][0]["question"].endswith("\nAnswer with the name only.")
