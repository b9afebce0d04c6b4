"""Shared fixtures: the real data beside the checkout, the synthetic set, tiny models.

Session-scoped so each expensive artefact (synthetic images, tiny checkpoints) is built once.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from intra-op threads on 2 cores, and the DDP tests run 2 processes:
# one thread each avoids oversubscription (seen 30x slower with 2 threads under load).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Question-bank indexes (hiertrain.taxonomy.bank_index) go to a folder of this session, not ~/.cache.
os.environ.setdefault("HIERTRAIN_INDEX_CACHE", tempfile.mkdtemp(prefix="hiertrain-index-"))

REPO = Path(__file__).resolve().parents[1]
# HIERTRAIN_SHARED_DATA: the reference folder when the checkout is not beside it (a worktree)
SHARED_DATA = Path(os.environ.get("HIERTRAIN_SHARED_DATA", REPO.parent / "shared" / "data"))


_OWN_CACHES = (".venv/", ".pytest_cache/", ".ruff_cache/", ".import_linter_cache/")


def _checkout_files() -> set[str] | None:
    """Untracked and ignored paths of the checkout (git's view), minus caches; None outside git."""
    import subprocess

    try:
        out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=normal"], cwd=REPO,
                             capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    paths = {line[3:] for line in out.splitlines() if line[:2] in ("??", "!!")}
    return {p for p in paths if not p.startswith(_OWN_CACHES) and "__pycache__" not in p and ".egg-info" not in p}


@pytest.fixture(autouse=True, scope="session")
def _no_test_writes_into_the_checkout():
    """Tests write under tmp_path only: a file a test session leaves in the checkout fails it."""
    before = _checkout_files()
    yield
    after = _checkout_files()
    if before is not None and after is not None and after - before:
        pytest.fail(f"the tests left files in the checkout: {', '.join(sorted(after - before))}", pytrace=False)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread in this process too (OMP_NUM_THREADS may have been read already)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (the paper's taxonomies and CUB questions); skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def reference_data(tmp_path_factory) -> Path:
    """The packaged reference data (hiertrain/reference), decompressed into a folder with the
    layout of `../shared/data` (taxonomies/, annotations/, probing/): what a clone or an
    install has, so tests of real data need nothing beside the checkout."""
    from hiertrain.base.resources import packaged_names, read_data_bytes

    out = tmp_path_factory.mktemp("reference")
    for name in packaged_names():
        target = out / name.removeprefix("hiertrain://")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_data_bytes(name))
    return out


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small synthetic hierarchical image set (see hiertrain.taxonomy.synth), built once per session."""
    from hiertrain.taxonomy.synth import make_synthetic

    out = tmp_path_factory.mktemp("synth")
    make_synthetic(out, images_per_leaf=3, seed=0, image_size=448)
    return out


def _tiny(tmp_path_factory, arch: str) -> Path:
    from hiertrain.vlm.tiny import make_tiny

    return make_tiny(arch, tmp_path_factory.mktemp(f"tiny_{arch}"), seed=0)


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory) -> Path:
    """A tiny random-init Qwen2.5-VL checkpoint dir, loadable with from_pretrained."""
    return _tiny(tmp_path_factory, "qwen2_5_vl")


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    """A tiny random-init LLaVA-OneVision checkpoint dir."""
    return _tiny(tmp_path_factory, "llava_onevision")


@pytest.fixture(scope="session")
def tiny_internvl(tmp_path_factory) -> Path:
    """A tiny random-init InternVL (transformers-native) checkpoint dir."""
    return _tiny(tmp_path_factory, "internvl")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A tiny random-init open_clip model dir (load with hiertrain.vlm.openclip.load_open_clip)."""
    return _tiny(tmp_path_factory, "clip")


def _bomb_png(path: Path, side: int = 20000) -> Path:
    """A small file whose PNG header claims side x side pixels (PIL's bomb guard reads the header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    body = zlib.compress(b"\0" * (side + 1))  # one row; the guard fires before decoding
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def bomb_png():
    """Writes a decompression-bomb PNG (20000 x 20000 claimed) at a path: `bomb_png(path)`."""
    return _bomb_png
