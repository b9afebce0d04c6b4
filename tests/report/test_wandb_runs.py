"""The report's W&B summary: each evaluation's W&B run and its sample table, linked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hiertrain.base.errors import HierError
from hiertrain.report.build import build_report, collect_runs, write_report


def _run(root: Path, name: str, wandb: dict | str | None) -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"kind": "eval", "model_name": name, "dataset": "d", "mode": "text",
                                            "answer": "logits", "run_name": name}))  # fmt: skip
    if wandb is not None:
        (d / "wandb.json").write_text(wandb if isinstance(wandb, str) else json.dumps(wandb))


def test_online_and_offline_runs_are_linked(tmp_path: Path) -> None:
    _run(tmp_path / "runs", "a", {"project": "hiertrain", "run_id": "abc123", "mode": "online",
                                  "url": "https://wandb.ai/me/hiertrain/runs/abc123", "dir": "/x", "tables": {"samples": 50}})
    _run(tmp_path / "runs", "b", {"project": "hiertrain", "run_id": "def456", "mode": "offline", "url": None,
                                  "dir": "/w/wandb/offline-run-1-def456", "tables": {"samples": 7}})
    _run(tmp_path / "runs", "c", None)  # logged to CSV: not listed
    md = write_report(build_report(collect_runs([tmp_path / "runs"])), tmp_path / "out").read_text()
    assert "| a | [abc123](https://wandb.ai/me/hiertrain/runs/abc123) | online | `samples` (50) |" in md
    assert "| b | def456 (offline: `wandb sync /w/wandb/offline-run-1-def456`) | offline | `samples` (7) |" in md
    assert [e["run"] for e in json.loads((tmp_path / "out" / "report.json").read_text())["wandb"]] == ["a", "b"]


def test_bad_wandb_json_names_the_file(tmp_path: Path) -> None:
    _run(tmp_path / "runs", "a", "{not json")
    with pytest.raises(HierError, match=r"a/wandb.json:1: not valid JSON"):
        write_report(build_report(collect_runs([tmp_path / "runs"])), tmp_path / "out")
