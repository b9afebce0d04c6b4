"""Sharded on-disk feature cache for probing: written one shard at a time, read by memory map.

Why this shape: a probing cache (iNat21-Plant x 31 sites x 3584 dims) is tens of GB, larger
than RAM. Each shard is a standard safetensors file holding, per pooling, a row-major tensor
``[rows, prompts, sites, max_dim]`` plus the sample records in the header; a row is one
contiguous read, so a probe batch is one fancy-index gather on a ``numpy.memmap``.
A shard becomes visible only when complete (written to ``*.tmp`` then renamed), which makes
extraction resumable: committed sample ids are skipped, a half-written shard is redone.
Each DDP rank writes its own ``shard-r{rank}-{k}`` files, so ranks never share a file.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from hiertrain.base.atomic import atomic_path, write_atomic
from hiertrain.base.errors import HierError

STORE_META = "store.json"
_SHARD_PREFIX = "shard-r"
_SHARD_SUFFIX = ".safetensors"

# `StoreLayout.info` keys that name a file rather than its content: the content is in the
# identity through the matching `*_sha256` key, so a store read from a moved file still resumes.
_PATH_INFO_KEYS = frozenset({"source", "taxonomy", "train_taxonomy", "test_taxonomy"})

# safetensors dtype codes, and how the raw bytes are viewed by numpy (bf16 has no numpy type).
_DTYPES: dict[str, tuple[torch.dtype, str, np.dtype]] = {
    "float32": (torch.float32, "F32", np.dtype("<f4")),
    "float16": (torch.float16, "F16", np.dtype("<f2")),
    "bfloat16": (torch.bfloat16, "BF16", np.dtype("<u2")),
}


@dataclass(frozen=True)
class StoreLayout:
    """What one row of the cache holds; identical for every shard of a store.

    ``sites`` are feature sources (``vision``, ``projector``, ``llm.0`` = embeddings, ...),
    ``dims`` their native widths (rows are zero-padded to ``max(dims)``). ``prompts`` are the
    text slots of a sample (one for images; one per asked level for taxonomy text), and
    ``prompt_for_level[i]`` says which slot level ``i`` is probed from (-1: level not probed).
    """

    mode: str
    sites: list[str]
    dims: list[int]
    pools: list[str]
    prompts: list[str]
    level_names: list[str]
    prompt_for_level: list[int]
    dtype: str = "float32"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise HierError(f"feature store dtype {self.dtype!r} is not one of {sorted(_DTYPES)}")
        if len(self.sites) != len(self.dims) or not self.sites:
            raise HierError(f"feature store: {len(self.sites)} sites but {len(self.dims)} dims")
        if len(self.prompt_for_level) != len(self.level_names):
            raise HierError("feature store: prompt_for_level needs one entry per level")

    @property
    def row_shape(self) -> tuple[int, int, int]:
        return (len(self.prompts), len(self.sites), max(self.dims))

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype][0]

    @property
    def bytes_per_row(self) -> int:
        p, s, d = self.row_shape
        return p * s * d * len(self.pools) * torch.finfo(self.torch_dtype).bits // 8

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> StoreLayout:
        return cls(**d)

    def identity(self) -> dict:
        """Everything that decides a row's numbers: the layout and the info fields except the
        file names whose content hash (`*_sha256`) is recorded (weights fingerprint, prompts,
        sites, pools, dtype, images list ...). A rerun must match it to add rows to a store."""
        d = json.loads(json.dumps(self.to_json()))
        d["info"] = {k: v for k, v in d["info"].items() if k not in _PATH_INFO_KEYS}
        return d


def _short(value: object, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def layout_differences(old: dict, new: dict) -> list[str]:
    """The identity fields that differ, as `name (store old, this run new)`; info by key."""
    out = []
    for key in sorted(set(old) | set(new), key=lambda k: (k == "info", k)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "info" and isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    out.append(f"{sub} (store {_short(a.get(sub))}, this run {_short(b.get(sub))})")
        else:
            out.append(f"{key} (store {_short(a)}, this run {_short(b)})")
    return out


def _shard_name(rank: int, k: int) -> str:
    return f"{_SHARD_PREFIX}{rank:03d}-{k:06d}{_SHARD_SUFFIX}"


_REDO = "delete it and rerun the same extraction (`hiertrain predict`) to extract its samples again"


def _read_header(path: Path) -> tuple[dict, int]:
    """The safetensors JSON header and the byte offset where the data buffer starts.

    Shards are committed by rename, so a damaged one comes from outside (a cut-off copy, a
    full disk during a copy): name it and say how to redo it instead of a JSON traceback.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise HierError(f"{path}: cut-off feature shard ({size} bytes); {_REDO}")
        (n,) = struct.unpack("<Q", raw)
        if 8 + n > size:
            raise HierError(f"{path}: cut-off feature shard (header of {n} bytes, file of {size}); {_REDO}")
        try:
            header = json.loads(f.read(n))
            json.loads(header["__metadata__"]["records"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise HierError(f"{path}: damaged feature shard header ({type(err).__name__}); {_REDO}") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise HierError(f"{path}: cut-off feature shard ({size} of {8 + n + end} bytes); {_REDO}")
    return header, 8 + n


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Stream tensors into a safetensors file without building the file in memory.

    `safetensors.torch.save_file` serialises to one bytes object first (a second copy of the
    shard); writing the header and then each buffer keeps peak memory at one shard.
    """
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _code(t.dtype), "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in tensors.values():
            t = t.contiguous()
            raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
            raw.numpy().tofile(f)
        f.flush()
        os.fsync(f.fileno())


def _code(dtype: torch.dtype) -> str:
    if dtype == torch.int64:
        return "I64"
    for tdtype, code, _ in _DTYPES.values():
        if tdtype == dtype:
            return code
    raise HierError(f"feature store cannot write dtype {dtype}")


@dataclass(frozen=True)
class Shard:
    """One committed shard: its path, records, and where each pooling's tensor starts."""

    path: Path
    records: list[dict]
    offsets: dict[str, int]


class FeatureStore:
    """Read side of a store directory (``store.json`` + committed shards)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        meta = self.root / STORE_META
        if not meta.is_file():
            raise HierError(f"{self.root}: not a feature store (no {STORE_META}); run feature extraction first")
        try:
            self.layout = StoreLayout.from_json(json.loads(meta.read_text()))
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as err:
            raise HierError(f"{meta}: not a store description ({type(err).__name__}); extract again into a new directory") from None
        self._maps: dict[tuple[int, str], np.memmap] = {}

    @classmethod
    def create(cls, root: str | Path, layout: StoreLayout, rank: int = 0) -> FeatureStore:
        """Open or create a store; refuse to mix rows of another identity into an existing one,
        naming every field that differs (a rebuilt model at the same path: its weights)."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        meta = root / STORE_META
        if meta.is_file():
            try:
                old = StoreLayout.from_json(json.loads(meta.read_text()))
            except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as err:
                raise HierError(f"{meta}: not a store description ({type(err).__name__}); use a new directory") from None
            diff = layout_differences(old.identity(), layout.identity())
            if diff:
                raise HierError(
                    f"{meta}: the store was extracted with another setup: {'; '.join(diff)}; "
                    "use a new directory (or delete this one) to extract again"
                )
        else:
            write_atomic(meta, json.dumps(layout.to_json(), indent=1))
        return cls(root)

    def shard_paths(self) -> list[Path]:
        return sorted(self.root.glob(f"{_SHARD_PREFIX}*{_SHARD_SUFFIX}"))

    @cached_property
    def shards(self) -> list[Shard]:
        out = []
        for path in self.shard_paths():
            header, start = _read_header(path)
            records = json.loads(header["__metadata__"]["records"])
            offsets = {p: start + header[p]["data_offsets"][0] for p in self.layout.pools}
            out.append(Shard(path, records, offsets))
        return out

    @cached_property
    def index(self) -> list[tuple[int, int, dict]]:
        """(shard number, row, record) for every cached sample, in sample-id order.

        A sample id in two shards means two runs wrote the same sample: refuse, naming both.
        """
        seen: dict[int, Path] = {}
        rows = []
        for si, shard in enumerate(self.shards):
            for r, rec in enumerate(shard.records):
                sid = int(rec["id"])
                if sid in seen:
                    raise HierError(f"{shard.path.name}: sample id {sid} already stored in {seen[sid].name}")
                seen[sid] = shard.path
                rows.append((si, r, rec))
        rows.sort(key=lambda t: int(t[2]["id"]))
        return rows

    def done_ids(self) -> set[int]:
        return {int(rec["id"]) for _, _, rec in self.index}

    def __len__(self) -> int:
        return len(self.index)

    def _map(self, shard: int, pool: str) -> np.memmap:
        key = (shard, pool)
        if key not in self._maps:
            if pool not in self.layout.pools:
                raise HierError(f"{self.root}: pooling {pool!r} not cached (have {self.layout.pools})")
            s = self.shards[shard]
            np_dtype = _DTYPES[self.layout.dtype][2]
            shape = (len(s.records), *self.layout.row_shape)
            self._maps[key] = np.memmap(s.path, dtype=np_dtype, mode="r", offset=s.offsets[pool], shape=shape)
        return self._maps[key]

    def gather(self, rows: list[tuple[int, int]], pool: str, sites: list[int] | None = None) -> torch.Tensor:
        """Rows ``[(shard, row), ...]`` as a float32 tensor ``[n, prompts, sites, max_dim]``.

        One fancy-index read per shard touched, so only the requested rows are paged in.
        """
        p, s, d = self.layout.row_shape
        n_sites = s if sites is None else len(sites)
        out = torch.empty((len(rows), p, n_sites, d), dtype=torch.float32)
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for pos, (shard, row) in enumerate(rows):
            by_shard.setdefault(shard, []).append((pos, row))
        for shard, items in by_shard.items():
            pos, idx = zip(*items)
            block = self._map(shard, pool)[np.asarray(idx)]
            if sites is not None:
                block = block[:, :, sites]
            t = torch.from_numpy(np.ascontiguousarray(block))
            if self.layout.dtype == "bfloat16":
                t = t.view(torch.bfloat16)
            out[list(pos)] = t.float()
        return out

    def __getstate__(self) -> dict:
        # memmaps are reopened lazily in each DataLoader worker
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state


class ShardWriter:
    """Buffers one rank's rows and commits a shard whenever the buffer is full.

    Peak memory is one preallocated shard buffer (``shard_rows`` rows, or as many rows as fit
    in ``max_shard_mb``), whatever the size of the whole cache.
    """

    def __init__(
        self,
        root: str | Path,
        layout: StoreLayout,
        rank: int = 0,
        shard_rows: int | None = None,
        max_shard_mb: float | None = None,
    ) -> None:
        self.store = FeatureStore.create(root, layout, rank)
        self.layout = layout
        self.rank = rank
        if shard_rows is None:
            budget = (max_shard_mb if max_shard_mb is not None else 256.0) * 2**20
            shard_rows = int(budget // layout.bytes_per_row)
        self.shard_rows = max(1, int(shard_rows))
        mine = sorted(Path(root).glob(f"{_SHARD_PREFIX}{rank:03d}-*{_SHARD_SUFFIX}"))
        self._next = 1 + max((int(p.name[len(_SHARD_PREFIX) + 4 : -len(_SHARD_SUFFIX)]) for p in mine), default=-1)
        for stale in Path(root).glob(f"{_SHARD_PREFIX}{rank:03d}-*.tmp"):
            stale.unlink()
        self._buf: dict[str, torch.Tensor] | None = None
        self._records: list[dict] = []
        self.written_rows = 0
        self.written_shards: list[Path] = []

    def _buffers(self) -> dict[str, torch.Tensor]:
        if self._buf is None:
            shape = (self.shard_rows, *self.layout.row_shape)
            self._buf = {p: torch.zeros(shape, dtype=self.layout.torch_dtype) for p in self.layout.pools}
        return self._buf

    def add(self, records: list[dict], features: dict[str, torch.Tensor]) -> None:
        """Append rows: ``features[pool]`` is ``[n, prompts, sites, max_dim]`` for the n records.

        A batch may fill fewer prompt slots than the store has (shallow leaves); the rest stay 0.
        """
        start = 0
        while start < len(records):
            buf = self._buffers()
            take = min(len(records) - start, self.shard_rows - len(self._records))
            at = len(self._records)
            for pool in self.layout.pools:
                rows = features[pool][start : start + take]
                if rows.shape[1] > self.layout.row_shape[0] or tuple(rows.shape[2:]) != self.layout.row_shape[1:]:
                    raise HierError(f"{self.store.root}: rows of shape {tuple(rows.shape[1:])} do not fit layout {self.layout.row_shape}")
                buf[pool][at : at + take].zero_()
                buf[pool][at : at + take, : rows.shape[1]] = rows.to(self.layout.torch_dtype)
            self._records.extend(records[start : start + take])
            start += take
            if len(self._records) == self.shard_rows:
                self.flush()

    def flush(self) -> Path | None:
        """Commit the buffered rows as one shard (atomic rename); no-op when empty."""
        n = len(self._records)
        if n == 0:
            return None
        assert self._buf is not None
        final = self.store.root / _shard_name(self.rank, self._next)
        ids = torch.tensor([int(r["id"]) for r in self._records], dtype=torch.int64)
        tensors = {"ids": ids, **{p: self._buf[p][:n] for p in self.layout.pools}}
        with atomic_path(final) as tmp:
            write_safetensors(tmp, tensors, {"records": json.dumps(self._records, ensure_ascii=False)})
        self._next += 1
        self.written_rows += n
        self.written_shards.append(final)
        self._records = []
        return final
