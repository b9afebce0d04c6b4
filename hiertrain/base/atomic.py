"""The one atomic file writer: every output appears complete or not at all.

Write to `<name>.<pid>.tmp` beside the target (one per process, so ranks never share one), flush and fsync it, then `os.replace` it over the
target (and fsync the folder so the rename survives a power cut). A failure on the way (full
disk, read-only folder) removes the temporary file and raises a one-line `HierError` naming
the target, so no partial or stray `.tmp` file is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from hiertrain.base.errors import HierError

TMP_SUFFIX = ".tmp"


def tmp_path(path: str | os.PathLike) -> Path:
    """The temporary sibling `atomic_path` writes into (same folder, so the rename is atomic)."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")


def os_error_reason(err: OSError) -> str:
    """A short reason for a failed file operation ("disk full", "permission denied", ...)."""
    return {errno.ENOSPC: "disk full", errno.EACCES: "permission denied", errno.EROFS: "read-only file system"}.get(
        err.errno or 0, err.strerror or type(err).__name__
    )


def write_error(path: str | os.PathLike, err: OSError) -> HierError:
    """The one-line error for a write that failed (full disk, no permission, ...)."""
    return HierError(f"{path}: cannot write ({os_error_reason(err)})")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s content into; on success it replaces `path`.

    For writers that want a path (`torch.save`, `savefig`, safetensors). The folder is created.
    """
    path = Path(path)
    tmp = tmp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise write_error(path, err) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Replace `path` with `data` (text is written as UTF-8 with "\\n" line ends) atomically."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(payload)
    return path


def file_error(err: OSError) -> HierError | None:
    """A one-line HierError for a failed file operation that names its file (unwritable
    folder, full disk); None for other OSErrors (pipes, sockets), which stay as they are."""
    if err.filename is None or isinstance(err, (BrokenPipeError, ConnectionError)):
        return None
    return HierError(f"{err.filename}: {os_error_reason(err)}")
