"""The one atomic writer: a failed write (full disk, no permission) leaves no partial file."""

from __future__ import annotations

import errno
import os

import pytest

from hiertrain.base import atomic
from hiertrain.base.atomic import atomic_path, file_error, write_atomic
from hiertrain.base.errors import HierError


def test_write_replaces_whole_file(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    write_atomic(target, "old\n")
    write_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]


def test_full_disk_is_one_line_and_leaves_no_tmp(tmp_path, monkeypatch):
    # issue 11 case 7: a full disk mid-write -> one line, the old file intact, no `.tmp` left
    target = tmp_path / "metrics.json"
    write_atomic(target, "old\n")

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(src))

    monkeypatch.setattr(atomic.os, "replace", full)
    with pytest.raises(HierError) as info:
        write_atomic(target, "new\n")
    assert str(info.value) == f"{target}: cannot write (disk full)"
    assert "\n" not in str(info.value)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_writer_error_inside_the_block_removes_tmp(tmp_path):
    target = tmp_path / "results.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_file_error_names_the_file():
    err = PermissionError(errno.EACCES, "Permission denied", "/ro/run")
    assert str(file_error(err)) == "/ro/run: permission denied"
    assert file_error(BrokenPipeError(errno.EPIPE, "Broken pipe")) is None
    assert file_error(OSError("no file")) is None
    assert os.sep  # (the module is importable without torch/lightning)
