"""The organisms shipped in the package (built by `hiertrain organism family`, a few MB each).

Each `shipped/<name>/` holds the checkpoint's files and its `manifest.json` (planted facts,
build settings, per-stage timings and curves, the check accuracies, a sha256 per file and the
build log's digest). `verify` compares the bytes with the manifest, so a shipped organism is
exactly the one its manifest describes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from hiertrain.base.errors import HierError
from hiertrain.organisms.world import file_digest

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"


def shipped_names() -> list[str]:
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / "manifest.json").is_file()) if SHIPPED_DIR.is_dir() else []


def manifest(name_or_dir: str | Path) -> dict:
    folder = Path(name_or_dir) if Path(name_or_dir).is_dir() else SHIPPED_DIR / str(name_or_dir)
    path = folder / "manifest.json"
    if not path.is_file():
        raise HierError(f"{path}: no organism manifest (shipped: {', '.join(shipped_names()) or 'none'})")
    return json.loads(path.read_text())


def verify(folder: Path) -> dict:
    """The manifest of `folder`, after checking every listed file's sha256 (HierError naming the file)."""
    m = manifest(folder)
    for name, digest in m["files"].items():
        path = folder / name
        if not path.is_file():
            raise HierError(f"{path}: missing (listed in {folder / 'manifest.json'})")
        if file_digest(path) != digest:
            raise HierError(f"{path}: sha256 differs from its manifest (a changed or corrupted organism)")
    return m


def export(out: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Copy shipped organisms to `out/<name>/` (verified before and after copying)."""
    out = Path(out)
    result = {}
    for name in names or shipped_names():
        src = SHIPPED_DIR / name
        verify(src)
        dst = out / name
        if dst.is_dir():
            try:
                verify(dst)
                result[name] = dst
                continue
            except HierError:
                shutil.rmtree(dst)
        tmp = out / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        verify(tmp)
        tmp.rename(dst)
        result[name] = dst
    if not result:
        raise HierError(f"{SHIPPED_DIR}: no shipped organisms")
    return result
