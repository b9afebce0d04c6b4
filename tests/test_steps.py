"""Resumable steps: finished steps are skipped, failures name the step, unfinished ones rerun."""

from __future__ import annotations

from pathlib import Path

import pytest

from hiertrain.errors import HierError
from hiertrain.steps import StepRunner


def test_rerun_skips_finished_and_redoes_failed(tmp_path: Path) -> None:
    calls: list[str] = []

    def ok(d: Path) -> None:
        calls.append("ok")
        (d / "out.txt").write_text("x")

    def boom(d: Path) -> None:
        calls.append("boom")
        raise RuntimeError("disk on fire\nmore")

    runner = StepRunner(tmp_path, total=2, echo=lambda s: None)
    runner.run("first", ok)
    with pytest.raises(HierError, match=r"step 'second' failed: RuntimeError: disk on fire \(see "):
        runner.run("second", boom)
    assert runner.done("first") and not runner.done("second")

    again = StepRunner(tmp_path, total=2, echo=lambda s: None)
    again.run("first", ok)
    again.run("second", ok)
    assert calls == ["ok", "boom", "ok"]
    assert again.done("second")
