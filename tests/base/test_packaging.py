"""A built wheel carries the reference data, its manifest and the tiny-model sizes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hiertrain.base.resources import reference_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_wheel_contains_package_data(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copy(REPO / "README.md", src)
    shutil.copytree(REPO / "hiertrain", src / "hiertrain", ignore=shutil.ignore_patterns("__pycache__"))
    # offline and fast: the installed setuptools, no build isolation, no dependencies
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("hiertrain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packaged = {f"hiertrain/reference/{p.relative_to(reference_dir()).as_posix()}" for p in reference_dir().rglob("*") if p.is_file()}
    assert len(packaged) >= 16 and packaged <= names, sorted(packaged - names)
    assert "hiertrain/reference/paper_files.json" in names and "hiertrain/reference/LICENSE-paper" in names
    tiny = {f"hiertrain/vlm/tiny_sizes/{p.name}" for p in (REPO / "hiertrain/vlm/tiny_sizes").glob("*.yaml")}
    assert tiny and tiny <= names
