"""Naming the data that ships inside the package, and reading data files gzipped or not.

One rule (docs/ARCHITECTURE.md, "Packaged reference data"): a path that starts with
`hiertrain://` names a file under the package's `reference/` folder, e.g.
`hiertrain://taxonomies/hierarchy_CUB200.json`. The files are stored gzipped (`NAME.gz`); the
name may be given with or without `.gz`. The folder is found with `importlib.resources`, so the
rule holds from any working directory and in a non-editable install. Any other path is an
ordinary file path. Every reader of packaged data goes through `read_data_bytes`, which
decompresses `.gz` files, so a user's own `taxonomy.json.gz` works too.
"""

from __future__ import annotations

import gzip
import os
import zlib
from importlib import resources
from pathlib import Path

from hiertrain.base.errors import HierError

SCHEME = "hiertrain://"
# `Path("hiertrain://x")` collapses the double slash, so the prefix is recognised without it.
_PREFIX = "hiertrain:"


def reference_dir() -> Path:
    """The package's `reference/` folder (taxonomies, CUB questions, probing splits)."""
    return Path(str(resources.files("hiertrain") / "reference"))


def is_packaged(path: str | os.PathLike) -> bool:
    """True when `path` uses the `hiertrain://` scheme."""
    return os.fspath(path).startswith(_PREFIX)


def packaged_names() -> list[str]:
    """Every `hiertrain://` name available, without the `.gz` suffix (for messages and docs)."""
    root = reference_dir()
    names = []
    for p in sorted(root.rglob("*.gz")):
        names.append(SCHEME + p.relative_to(root).as_posix()[: -len(".gz")])
    return names


def resolve_data_path(path: str | os.PathLike) -> Path:
    """The file a data path names: `hiertrain://REL` -> `<package>/reference/REL[.gz]`.

    Other paths come back unchanged (as a Path). HierError for an unknown packaged name."""
    text = os.fspath(path)
    if not text.startswith(_PREFIX):
        return Path(text)
    rel = text[len(_PREFIX) :].lstrip("/")
    root = reference_dir()
    for candidate in (root / rel, root / f"{rel}.gz"):
        if rel and candidate.is_file():
            return candidate
    known = ", ".join(n[len(SCHEME) :] for n in packaged_names())
    raise HierError(f"{SCHEME}{rel}: no such packaged file (known: {known})")


def read_data_bytes(path: str | os.PathLike) -> bytes:
    """The (decompressed) bytes of a data file; `hiertrain://` names and `.gz` files included."""
    real = resolve_data_path(path)
    try:
        data = real.read_bytes()
    except FileNotFoundError:
        raise HierError(f"{real}: no such file") from None
    except OSError as err:
        raise HierError(f"{real}: cannot read: {err.strerror or err}") from None
    if real.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise HierError(f"{real}: not a readable gzip file ({err})") from None
    return data


def read_data_text(path: str | os.PathLike) -> str:
    """`read_data_bytes` decoded as UTF-8; HierError naming the file and byte otherwise."""
    data = read_data_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise HierError(f"{resolve_data_path(path)}: not UTF-8 ({err.reason} at byte {err.start})") from None


_SHA256: dict[tuple, str] = {}  # (file, size, mtime_ns, inode) -> hex digest, this process only


def data_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a data file's content (a gzipped or packaged file: of its decompressed bytes).

    Remembered in this process per (file, size, mtime, inode): a run hashes its 1M-record bank
    once, though the bank index and run.json both need the digest."""
    import hashlib

    real = resolve_data_path(path)
    if real.suffix == ".gz":
        return hashlib.sha256(read_data_bytes(real)).hexdigest()
    stat = real.stat()
    key = (str(real.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with open(real, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]
