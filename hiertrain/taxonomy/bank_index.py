"""A question bank as a byte-offset index: one pass over the file, records parsed when served.

`hiertrain test --data.limit 10` on a 1M-record bank used to parse every record into objects
(86 s, 7 GB). The index keeps, per record, only what serving decides on: where its line starts,
its split and label (as codes into small vocabularies), its depth and its single-option
questions; a record is parsed again (and checked again, with the same one-line errors) when it
is served. Building the index checks every line exactly as `read_questions` does
(`question_bank.parse_line` + `check_question`, the one record validator), so a bank that
loads today loads, and a bad one fails with the same message; only the labels of records that
are served (all records of the served split, before `limit`) are checked against a taxonomy.

Indexes are cached by content (SHA-256 of the bank's bytes + `INDEX_VERSION`) under
`$HIERTRAIN_INDEX_CACHE` (default `~/.cache/hiertrain/bank-index`; `off` disables it), written
atomically; an unwritable cache folder only costs the rebuild. Bump `INDEX_VERSION` whenever
record validation or the stored fields change, so no index built under older rules is reused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from hiertrain.base.errors import HierError
from hiertrain.taxonomy.question_bank import LEVEL_KEY, QuestionRecord, check_question, parse_line, record_id, repeat_message
from hiertrain.base.resources import data_sha256, read_data_bytes, resolve_data_path

INDEX_VERSION = "2"  # 2: a repeated record is refused (issue 22 item 18)
_MODES = ("image", "text")
_FIELDS = ("offsets", "split_codes", "label_codes", "depths", "single_image", "first_image", "single_text", "first_text")


def index_cache_dir() -> Path | None:
    """Where indexes are kept ($HIERTRAIN_INDEX_CACHE; `off` or empty = none)."""
    value = os.environ.get("HIERTRAIN_INDEX_CACHE")
    if value is None:
        return Path.home() / ".cache" / "hiertrain" / "bank-index"
    return None if value.strip().lower() in ("", "off", "0", "none") else Path(value)


class QuestionIndex:
    """Per record of one bank: line offset, split, label, depth and single-option questions."""

    def __init__(self, path: Path, arrays: dict[str, np.ndarray], splits: list[str], labels: list[str], data: bytes | None):
        self.path = path  # the resolved file; "FILE:LINE" messages name it as read_questions does
        self.offsets = arrays["offsets"]  # [N + 1] byte offsets of the lines (of `data` when in memory)
        self.split_codes, self.label_codes = arrays["split_codes"], arrays["label_codes"]
        self.depths = arrays["depths"]  # len(record.truths)
        self.single = {m: arrays[f"single_{m}"] for m in _MODES}  # asked questions with < 2 options
        self.first_single = {m: arrays[f"first_{m}"] for m in _MODES}  # the first one's level, -1 none
        self.splits, self.labels = splits, labels
        self._data = data  # decompressed bytes of a gzipped / packaged bank (small files)

    def __len__(self) -> int:
        return len(self.depths)

    @classmethod
    def of(cls, path: str | os.PathLike) -> QuestionIndex:
        """The index of a bank: from the cache when its content was indexed before, else built."""
        real = resolve_data_path(path)
        if not real.exists():
            raise HierError(f"{real}: file not found")
        in_memory = real.suffix == ".gz"
        data = read_data_bytes(real) if in_memory else None
        cache = index_cache_dir()
        cached = None
        if cache is not None:
            digest = hashlib.sha256(data).hexdigest() if data is not None else data_sha256(real)
            cached = cache / f"{digest}-v{INDEX_VERSION}.npz"
            loaded = _load(cached, real, data)
            if loaded is not None:
                return loaded
        index = _build(real, data)
        if cached is not None:
            _save(index, cached)
        return index

    def line(self, row: int, source: Any = None) -> bytes:
        """The bytes of record `row`'s line (`source`: an open binary file to read from)."""
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        if self._data is not None:
            return self._data[start:end]
        if source is not None:
            source.seek(start)
            return source.read(end - start)
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(end - start)

    def record(self, row: int, source: Any = None) -> QuestionRecord:
        """Record `row`, parsed and checked as `read_questions` does (same one-line errors)."""
        where = f"{self.path}:{row + 1}"
        obj = parse_line(_text(self.line(row, source), self.path, int(self.offsets[row])), where)
        check_question(obj, where)
        return QuestionRecord(raw=obj, sample_id=row)

    def records(self) -> LazyRecords:
        return LazyRecords(self, np.arange(len(self), dtype=np.int64))


class LazyRecords(Sequence[QuestionRecord]):
    """Some records of an index, in file order; a record is parsed each time it is asked for."""

    def __init__(self, index: QuestionIndex, rows: np.ndarray):
        self.index, self.rows = index, rows

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, i: int) -> QuestionRecord: ...
    @overload
    def __getitem__(self, i: slice) -> LazyRecords: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return LazyRecords(self.index, self.rows[i])
        return self.index.record(int(self.rows[i]))

    def __iter__(self) -> Iterator[QuestionRecord]:
        if self.index._data is not None:
            yield from (self.index.record(int(r)) for r in self.rows)
            return
        with open(self.index.path, "rb") as f:  # one open file for a sequential read
            for r in self.rows:
                yield self.index.record(int(r), f)

    @property
    def sample_ids(self) -> list[int]:
        return self.rows.tolist()

    def splits(self) -> list[str]:
        """The distinct splits of these records, sorted."""
        return sorted(self.index.splits[c] for c in np.unique(self.index.split_codes[self.rows]))

    def with_split(self, split: str) -> LazyRecords:
        codes = [c for c, name in enumerate(self.index.splits) if name == split]
        keep = self.index.split_codes[self.rows] == codes[0] if codes else np.zeros(len(self.rows), bool)
        return LazyRecords(self.index, self.rows[keep])

    def excluding(self, ids: Iterable[int]) -> LazyRecords:
        ids = np.fromiter(ids, dtype=np.int64)
        return self if not len(ids) else LazyRecords(self.index, self.rows[~np.isin(self.rows, ids)])

    def depth(self) -> int:
        """Most levels of any of these records."""
        return int(self.index.depths[self.rows].max()) if len(self.rows) else 0

    def label_codes(self) -> np.ndarray:
        return self.index.label_codes[self.rows]


# ---------------------------------------------------------------------------------------
# Building, loading, saving


def _text(line: bytes, path: Path, offset: int) -> str:
    """One line decoded; the message of a whole-file decode (byte offset in the file) otherwise."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise HierError(f"{path}: not UTF-8 ({err.reason} at byte {offset + err.start})") from None
    return text[:-1] if text.endswith("\n") else text


def _first_utf8_error(source: Any, path: Path, offset: int) -> None:
    """read_questions decodes the whole file before reading a line: a bad byte anywhere after a
    bad line is still the error it reports."""
    for line in source:
        _text(line, path, offset)
        offset += len(line)


def _build(path: Path, data: bytes | None) -> QuestionIndex:
    source = io.BytesIO(data) if data is not None else open(path, "rb")
    offsets, splits, labels = [0], {}, {}
    split_codes, label_codes, depths = [], [], []
    single = {m: [] for m in _MODES}
    first = {m: [] for m in _MODES}
    seen: dict[str, int] = {}  # record id -> its line (a repeat would be scored twice)
    with source:
        offset = 0
        for row, line in enumerate(source):
            where = f"{path}:{row + 1}"
            try:
                obj = parse_line(_text(line, path, offset), where)
                check_question(obj, where)
                key = record_id(obj)
                if key in seen:
                    raise HierError(f"{where}: {repeat_message(seen[key], key)}")
                seen[key] = row + 1
            except HierError:
                _first_utf8_error(source, path, offset + len(line))
                raise
            offset += len(line)
            offsets.append(offset)
            split_codes.append(splits.setdefault(obj["split"], len(splits)))
            label_codes.append(labels.setdefault(obj["label"], len(labels)))
            # QuestionRecord.truths / .choices and prompts.asked_levels, without building lists
            numbers = [int(k[5:]) for k in obj if k[:5] == "level" and LEVEL_KEY.fullmatch(k)]
            depths.append(max(numbers))
            asked = sorted(n for n in numbers if obj[f"level{n}"] is not None)
            few = [n - 1 for n in asked if len(obj.get(f"choices_level{n}") or ()) < 2]
            single["image"].append(len(few))
            first["image"].append(few[0] if few else -1)
            if few and few[-1] == asked[-1] - 1:  # text mode does not ask the deepest level
                few.pop()
            single["text"].append(len(few))
            first["text"].append(few[0] if few else -1)
    arrays = {
        "offsets": np.asarray(offsets, dtype=np.int64),
        "split_codes": np.asarray(split_codes, dtype=np.int32),
        "label_codes": np.asarray(label_codes, dtype=np.int32),
        "depths": np.asarray(depths, dtype=np.int32),
        **{f"single_{m}": np.asarray(single[m], dtype=np.int32) for m in _MODES},
        **{f"first_{m}": np.asarray(first[m], dtype=np.int32) for m in _MODES},
    }
    return QuestionIndex(path, arrays, list(splits), list(labels), data)


def _load(file: Path, path: Path, data: bytes | None) -> QuestionIndex | None:
    """A cached index, or None when absent or unreadable (then it is rebuilt)."""
    try:
        with np.load(file, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in _FIELDS}
            vocab = json.loads(bytes(stored["vocab"]).decode("utf-8"))
    except (OSError, KeyError, ValueError):
        return None
    return QuestionIndex(path, arrays, vocab["splits"], vocab["labels"], data)


def _save(index: QuestionIndex, file: Path) -> None:
    from hiertrain.base.atomic import atomic_path

    arrays = {
        "offsets": index.offsets, "split_codes": index.split_codes, "label_codes": index.label_codes,
        "depths": index.depths,
        **{f"single_{m}": index.single[m] for m in _MODES}, **{f"first_{m}": index.first_single[m] for m in _MODES},
    }  # fmt: skip
    vocab = json.dumps({"splits": index.splits, "labels": index.labels}, ensure_ascii=False).encode("utf-8")
    try:
        with atomic_path(file) as tmp, open(tmp, "wb") as f:
            np.savez(f, vocab=np.frombuffer(vocab, dtype=np.uint8), **arrays)
    except (HierError, OSError):
        pass  # the cache is an optimisation: an unwritable folder only costs the next rebuild

