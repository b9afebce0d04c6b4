"""Download the paper's remaining data files and verify each against its git blob id.

The manifest `hiertrain/reference/paper_files.json` lists every data file of the paper's
repository (yuanqing-ai/LLM-Hierarchical-Consistency, MIT licence) at the pinned commit with its
git blob id: the ones hiertrain ships (`packaged`: taxonomies, CUB questions, probing splits)
and the ones it fetches (`group`: annotations, training, probing; `local`: where under `--out`).
A blob id is sha1(b"blob <size>\\0" + content), exactly `git hash-object`, so a file is checked
against the repository's own record, not against a hash we computed.

Downloads use only the standard library (urllib). Each file goes to a temporary name in the
target folder and is renamed into place only after its blob id matched, so an interrupted or
corrupted download never leaves a file that looks finished; a rerun skips files that are
present and verified (resumable).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from hiertrain.base.errors import HierError
from hiertrain.base.resources import reference_dir

GROUPS = ("annotations", "training", "probing")
CHUNK = 1 << 16


@dataclass(frozen=True)
class PaperFile:
    """One file of the paper's repository: its path there, blob id and place under `--out`."""

    path: str
    blob: str
    group: str | None = None  # set for the files `hiertrain data fetch paper` downloads
    local: str | None = None
    packaged: str | None = None  # hiertrain://<packaged> when hiertrain ships it


@dataclass(frozen=True)
class Manifest:
    repository: str
    commit: str
    base_url: str
    files: list[PaperFile]

    def fetchable(self, what: str = "all") -> list[PaperFile]:
        """The files of one group ("annotations", "training", "probing") or of all groups."""
        if what != "all" and what not in GROUPS:
            raise HierError(f"--what {what!r}: expected one of {', '.join(GROUPS)}, all")
        return [f for f in self.files if f.group and (what == "all" or f.group == what)]


def manifest_path() -> Path:
    return reference_dir() / "paper_files.json"


def load_manifest(path: str | os.PathLike | None = None) -> Manifest:
    """Read a manifest (default: the packaged one); HierError naming the file on a bad entry."""
    path = Path(path) if path is not None else manifest_path()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise HierError(f"{path}: cannot read the manifest ({err})") from None
    files = []
    for n, entry in enumerate(raw.get("files", [])):
        try:
            item = PaperFile(**entry)
        except TypeError as err:
            raise HierError(f"{path}: files[{n}]: {err}") from None
        if len(item.blob) != 40 or item.group is not None and (item.group not in GROUPS or not item.local):
            raise HierError(f"{path}: files[{n}] ({item.path}): bad blob id, group or local path")
        if item.local is not None and not _inside(item.local):
            raise HierError(f"{path}: files[{n}] ({item.path}): local path {item.local!r} leaves --out (absolute or '..'); refused")
        files.append(item)
    return Manifest(raw["repository"], raw["commit"], raw["base_url"], files)


def _inside(local: str) -> bool:
    """Whether a manifest `local` path stays below `--out`: relative, no `..`, no drive."""
    parts = PurePosixPath(local.replace("\\", "/")).parts
    return bool(parts) and parts[0] != "/" and ".." not in parts and ":" not in parts[0]


def blob_id(data: bytes) -> str:
    """git's blob id of `data` (what `git hash-object` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def file_blob_id(path: str | os.PathLike) -> str:
    """`blob_id` of a file's content, read in chunks."""
    path = Path(path)
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class FetchReport:
    downloaded: list[str]
    skipped: list[str]  # present and verified
    cleaned: list[str] = field(default_factory=list)  # temp files a killed earlier run left


def fetch_files(
    files: list[PaperFile],
    out: str | os.PathLike,
    base_url: str,
    progress: bool = True,
    timeout: float = 60.0,
) -> FetchReport:
    """Download `files` into `out` (each at its `local` path) from `base_url/<path>`.

    A present file whose blob id matches is skipped. The first failure (no connection, HTTP
    error, lost connection, cut-off transfer, blob id mismatch) raises a one-line HierError;
    files finished before it stay, the failing one is not kept. Temp files of an earlier run
    that was killed (`kill -9` skips every cleanup) are removed first. A `local` path that
    would land outside `out` is refused before anything is written."""
    out = Path(out)
    report = FetchReport([], [])
    for item in files:
        if not item.local or not _inside(item.local):
            raise HierError(f"{item.path}: local path {item.local!r} leaves --out {out} (absolute or '..'); refused")
    for item in files:
        dest = out / item.local
        report.cleaned.extend(_clean_stale_tmp(dest))
        if dest.is_file() and file_blob_id(dest) == item.blob:
            report.skipped.append(item.local)
            continue
        created = _missing_dirs(dest.parent)
        dest.parent.mkdir(parents=True, exist_ok=True)
        url = f"{base_url.rstrip('/')}/{item.path}"
        try:
            _download_verified(url, dest, item, progress, timeout)
        except BaseException:
            for folder in created:  # deepest first; only folders this call made and left empty
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            raise
        report.downloaded.append(item.local)
    return report


def _clean_stale_tmp(dest: Path) -> list[str]:
    """Remove `dest`'s temp files (`<name>.<pid>.tmp`, hiertrain.base.atomic) whose process is
    gone: a killed fetch leaves one; a live one (another fetch running now) is left alone."""
    from hiertrain.base.atomic import TMP_SUFFIX

    removed = []
    if not dest.parent.is_dir():
        return removed
    for tmp in dest.parent.glob(f"{dest.name}.*{TMP_SUFFIX}"):
        pid = tmp.name[len(dest.name) + 1 : -len(TMP_SUFFIX)]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(str(tmp))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process has no download under way before it starts one
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _missing_dirs(folder: Path) -> list[Path]:
    """`folder` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing


def _download_verified(url: str, dest: Path, item: PaperFile, progress: bool, timeout: float) -> None:
    from hiertrain.base.atomic import atomic_path

    with atomic_path(dest) as tmp:  # a failed or mismatching download leaves nothing behind
        with open(tmp, "wb") as f:
            expected = _stream(url, f, dest.name, progress, timeout)
        received = tmp.stat().st_size
        if expected is not None and received < expected:
            raise HierError(f"{url}: transfer truncated ({received} of {expected} bytes received; not kept); rerun to fetch it again")
        got = file_blob_id(tmp)
        if got != item.blob:
            raise HierError(
                f"{url}: blob id {got} does not match the manifest's {item.blob} "
                f"({tmp.stat().st_size} bytes received; not kept)"
            )


def _stream(url: str, f, name: str, progress: bool, timeout: float) -> int | None:
    """Write the response body into `f`; the size the server announced (Content-Length), if
    any. http.client ends a body cut short without an error, so the caller compares sizes."""
    from tqdm import tqdm

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = response.headers.get("Content-Length")
            with tqdm(
                total=int(total) if total else None, unit="B", unit_scale=True, desc=name,
                disable=not progress, leave=False,
            ) as bar:  # fmt: skip
                for block in iter(lambda: response.read(CHUNK), b""):
                    f.write(block)
                    bar.update(len(block))
        return int(total) if total and total.isdigit() else None
    except urllib.error.HTTPError as err:
        raise HierError(f"{url}: HTTP error {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise HierError(f"{url}: cannot connect ({err.reason}); no network? a mirror can be given with --base-url") from None
    except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError) as err:
        raise HierError(f"{url}: transfer truncated (connection lost: {type(err).__name__}; not kept); rerun to fetch it again") from None
