"""The session guard in tests/conftest.py: a test that leaves a file in the checkout fails the run.

Each case runs a pytest session in a throwaway git checkout holding a copy of the real
conftest.py, so the guard itself is what is tested, not a re-implementation of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

LEAKS = """
from pathlib import Path


def test_writes_beside_the_checkout():
    (Path(__file__).resolve().parents[1] / "runs").mkdir()
    (Path(__file__).resolve().parents[1] / "runs" / "config.yaml").write_text("leaked")
"""

CLEAN = """
def test_writes_under_tmp_path(tmp_path):
    (tmp_path / "config.yaml").write_text("fine")
"""


def _session(tmp_path: Path, test_source: str) -> subprocess.CompletedProcess:
    checkout = tmp_path / "checkout"
    (checkout / "tests").mkdir(parents=True)
    shutil.copy(REPO / "tests" / "conftest.py", checkout / "tests" / "conftest.py")
    (checkout / "tests" / "test_case.py").write_text(test_source)
    (checkout / "pytest.ini").write_text("[pytest]\n")  # its own rootdir, not this repo's config
    subprocess.run(["git", "init", "-q"], cwd=checkout, check=True, capture_output=True, timeout=60)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_case.py"],
        cwd=checkout, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("git") is None, reason="the guard reads the checkout through git")
def test_guard_fails_a_session_that_writes_into_the_checkout(tmp_path):
    leaky = _session(tmp_path / "leaky", LEAKS)
    assert leaky.returncode != 0, leaky.stdout[-2000:]
    assert "the tests left files in the checkout: runs/" in leaky.stdout, leaky.stdout[-2000:]

    clean = _session(tmp_path / "clean", CLEAN)  # the control: the same guard, a test that behaves
    assert clean.returncode == 0, clean.stdout[-2000:]
    assert "left files" not in clean.stdout
