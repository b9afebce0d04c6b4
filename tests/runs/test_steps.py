"""Resumable steps: finished steps are skipped, failures name the step, unfinished ones rerun."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hiertrain.base.errors import HierError
from hiertrain.runs.steps import StepRunner


def test_rerun_skips_finished_and_redoes_failed(tmp_path: Path) -> None:
    calls: list[str] = []

    def ok() -> None:
        calls.append("ok")

    def boom() -> None:
        calls.append("boom")
        raise RuntimeError("disk on fire\nmore")

    runner = StepRunner(tmp_path, total=2, echo=lambda s: None)
    assert runner.run("first", ok)
    with pytest.raises(HierError, match=r"^step 'second' failed: RuntimeError: disk on fire$"):
        runner.run("second", boom)
    assert runner.done("first") and not runner.done("second")

    again = StepRunner(tmp_path, total=2, echo=lambda s: None)
    assert not again.run("first", ok)
    assert again.run("second", ok)
    assert calls == ["ok", "boom", "ok"]
    assert again.done("second")


def test_cli_exit_inside_a_step_names_the_step(tmp_path: Path) -> None:
    runner = StepRunner(tmp_path, echo=lambda s: None)
    with pytest.raises(HierError, match=r"step 'eval' failed \(exit status 2"):
        runner.run("eval", lambda: sys.exit(2))
    assert not runner.done("eval")
    assert runner.run("clean-exit", lambda: sys.exit(0))
