"""A CUB text-mode evaluation from another working directory: packaged data only, no ../shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HIERTRAIN = str(Path(sys.executable).with_name("hiertrain"))


@pytest.mark.slow
def test_cub_text_eval_runs_from_any_cwd(tiny_qwen, tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    args = [
        HIERTRAIN, "test",
        "--config", str(REPO / "configs/demo/qwen_text.yaml"),
        "--config", str(REPO / "configs/data/cub200_random.yaml"),
        f"--model.pretrained={tiny_qwen}",
        "--data.mode=text", "--data.limit=3", "--data.num_workers=0",
        "--trainer.default_root_dir=runs", "--trainer.enable_progress_bar=false", "--model.run_name=cub",
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "disabled"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = cwd / "runs" / "cub"
    meta = json.loads((run / "run.json").read_text())
    assert meta["questions"] == "hiertrain://annotations/CUB200_with_random_choice.jsonl"
    lines = (run / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert first["label"] == "Black-footed Albatross" and first["mode"] == "text"
    assert [lv["name"] for lv in first["levels"]][:3] == ["order", "family", "genus"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_samples"] == 3 and metrics["level_names"] == ["order", "family", "genus", "species"]
