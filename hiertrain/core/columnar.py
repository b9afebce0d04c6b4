"""A predictions file read in one streaming pass into compact per-sample x level arrays.

`hiertrain score` (and the other whole-file readers) need, per sample and level, only whether it
was asked, right and parsed, and how many options it offered; building a `SamplePrediction` with
a `LevelPrediction` per level (`hiertrain.core.predictions.read_predictions`) costs ~13 KB a
record and keeps the whole file's text in memory. Here each line is decoded and reduced to a few
small integers at once, so memory is O(N x levels) bytes.

One set of rules: the fast path accepts only lines that are plainly well formed (the types
`_sample_from_json` requires); anything else, and any whole-file problem (a duplicate id, a JSON
object instead of lines, bad UTF-8), is handed to the reference reader in
`hiertrain.core.predictions`, which raises its own one-line error. So both readers accept the same
files and give the same messages. The paper's result JSON (a list) goes through the reference
reader and is then reduced to the same arrays.

Lines are decoded with msgspec when it is installed (only the needed fields, ~2.5x faster than
`json`), else with the standard library; the result is the same.
"""

from __future__ import annotations

import functools
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hiertrain.core.errors import HierError

# per-level code bits
ASKED, CORRECT, PARSED = 1, 2, 4


@dataclass
class PredictionColumns:
    """A predictions file as arrays, rows sorted by sample id (as `read_predictions` sorts samples).

    `code[r, c]` holds ASKED | CORRECT | PARSED bits of level c + 1 (0 = the sample has no such
    level), `choices[r, c]` how many answers it offered (options, or open-set candidates).
    """

    ids: np.ndarray  # [N] int64
    code: np.ndarray  # [N, W] uint8
    present: np.ndarray  # [N, W] bool: the sample has this level
    choices: np.ndarray  # [N, W] int32
    names: list[str | None]  # per level: the first name (by sample id) that is set
    modes: set[str]
    format: str  # "jsonl" | "paper"
    truncated_line: int | None = None
    deepest: tuple[int, int | None] = (1, None)  # (deepest level, the largest id that has it), as `to_tensors` names it

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def width(self) -> int:
        return int(self.code.shape[1])

    def tensors(self, depth: int | None = None):
        """(correct, asked, parsed) bool tensors [N, W] exactly as `predictions.to_tensors` makes them."""
        import torch

        from hiertrain.core.functional import MAX_DEPTH

        deepest = self.deepest[0]
        if depth is not None and not 1 <= depth <= MAX_DEPTH:
            raise HierError(f"depth {depth}: 1 to {MAX_DEPTH} levels are supported")
        limit = f"the data's depth {depth}" if depth is not None else f"the {MAX_DEPTH} levels supported"
        if deepest > (depth or MAX_DEPTH):
            raise HierError(f"sample {self.deepest[1]}: level {deepest} is deeper than {limit}")
        width = depth or deepest
        code = np.zeros((len(self), width), dtype=np.uint8)
        code[:, : self.width] = self.code
        asked = (code & ASKED) != 0
        correct = asked & ((code & CORRECT) != 0)
        parsed = ((code & PARSED) != 0) | ~asked
        return torch.from_numpy(correct), torch.from_numpy(asked), torch.from_numpy(parsed)

    def chance(self, depth: int | None = None, ignore: frozenset[int] | set[int] = frozenset()) -> dict[str, Any]:
        """`hiertrain.core.chance.chance_levels` on these arrays, bit for bit: the same divisions
        in the same order (cumulative sums add left to right, as its loop does)."""
        from hiertrain.core.chance import RULE

        width = max(depth or 0, self.width if len(self) else 0)
        asked = (self.code & ASKED) != 0
        for n in ignore:
            if 1 <= n <= self.width:
                asked[:, n - 1] = False
        scored_rows = asked.any(1)
        bad = asked & (self.choices == 0)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise HierError(f"sample {int(self.ids[row])} level {int(col) + 1}: asked with no options recorded")
        inv = np.where(asked, 1.0 / np.maximum(self.choices, 1), 0.0)
        product = np.ones(len(self))
        for c in range(self.width):
            product = np.where(asked[:, c], product / np.maximum(self.choices[:, c], 1), product)
        leaf_col = np.where(asked, np.arange(self.width), -1).max(1) if self.width else np.zeros(0, int)

        def seq_sum(values: np.ndarray) -> float:
            return float(np.cumsum(values)[-1]) if values.size else 0.0

        scored = int(scored_rows.sum())
        sums = [seq_sum(inv[asked[:, c], c]) if c < self.width else 0.0 for c in range(width)]
        counts = [int(asked[:, c].sum()) if c < self.width else 0 for c in range(width)]
        rows = np.nonzero(scored_rows)[0]
        hca_sum = seq_sum(product[rows])
        leaf_sum = seq_sum(inv[rows, leaf_col[rows]]) if rows.size else 0.0
        return {
            "rule": RULE,
            "hca": hca_sum / scored if scored else None,
            "leaf_accuracy": leaf_sum / scored if scored else None,
            "per_level_accuracy": [s / c if c else None for s, c in zip(sums, counts)],
        }

    def asked_levels(self) -> np.ndarray:
        """[N, W] bool: which levels each sample was asked (for paired comparisons)."""
        return (self.code & ASKED) != 0


@functools.lru_cache(maxsize=1)
def _decoder():
    """(msgspec's decode for the needed fields, its errors), or None when msgspec is not installed."""
    try:
        import msgspec
    except ImportError:
        return None
    needed = [("level", Any), ("truth", Any), ("correct", Any), ("asked", Any)]
    optional = [(name, Any, None) for name in ("options", "letter", "predicted", "name", "detail")]
    level = msgspec.defstruct("Level", needed + optional)
    sample = msgspec.defstruct("Sample", [("id", Any), ("levels", list[level]), ("mode", Any, "image")])
    return msgspec.json.Decoder(sample).decode, (msgspec.DecodeError, msgspec.ValidationError)


_MODES = ("image", "text")


class _Slow(Exception):
    """This line needs the reference reader."""


def _int(value: Any) -> bool:
    return type(value) is int


def _level_values(lv: Any) -> tuple[int, int, int, str | None]:
    """(level, code, choices, name) of a plainly well-formed level, else _Slow."""
    if isinstance(lv, dict):
        get = lv.get
        if not ("level" in lv and "truth" in lv and "correct" in lv and "asked" in lv):
            raise _Slow
        level, truth, correct, asked = lv["level"], lv["truth"], lv["correct"], lv["asked"]
        options, letter, predicted, name, detail = get("options"), get("letter"), get("predicted"), get("name"), get("detail")
    else:
        level, truth, correct, asked = lv.level, lv.truth, lv.correct, lv.asked
        options, letter, predicted, name, detail = lv.options, lv.letter, lv.predicted, lv.name, lv.detail
    if not (_int(level) and level >= 1 and type(truth) is str and type(correct) is bool and type(asked) is bool):
        raise _Slow
    if options is not None and type(options) is not list:
        raise _Slow
    parsed = letter is not None or predicted is not None
    if asked and correct and not parsed:
        raise _Slow
    choices = len(options) if options else 0
    if not choices and detail:
        if not isinstance(detail, dict):
            raise _Slow
        try:
            choices = int(detail.get("candidates") or 0)
        except (TypeError, ValueError):
            raise _Slow from None
    code = (ASKED if asked else 0) | (CORRECT if asked and correct else 0) | (PARSED if parsed or not asked else 0)
    return level, code, choices, name


def _fast_sample(obj: Any) -> tuple[int, str, list[tuple[int, int, int, str | None]]]:
    if isinstance(obj, dict):
        if "id" not in obj or "levels" not in obj:
            raise _Slow
        sid, levels, mode = obj["id"], obj["levels"], obj.get("mode", "image")
        if type(levels) is not list:
            raise _Slow
    else:
        sid, levels, mode = obj.id, obj.levels, obj.mode
    if not _int(sid) or mode not in _MODES or (type(mode) is not str):
        raise _Slow
    values = [_level_values(lv) for lv in levels]
    numbers = [v[0] for v in values]
    if len(set(numbers)) != len(numbers):
        raise _Slow
    return sid, mode, values


def _reference(path: Path, mode: str | None = None):
    """The reference reader (raises its own error for a bad file)."""
    from hiertrain.core.predictions import read_predictions

    return read_predictions(path, mode)


def from_samples(samples: list, fmt: str, truncated: int | None = None) -> PredictionColumns:
    """Arrays of already-read `SamplePrediction`s (sorted by id)."""
    builder = _Builder()
    for s in samples:
        vals = []
        for lv in s.levels:
            choices = len(lv.options) or int((lv.detail or {}).get("candidates") or 0)
            code = (ASKED if lv.asked else 0) | (CORRECT if lv.asked and lv.correct else 0) | (PARSED if lv.parsed or not lv.asked else 0)
            vals.append((lv.level, code, choices, lv.name))
        builder.add(s.id, s.mode, vals)
    return builder.finish(fmt, truncated)


class _Builder:
    def __init__(self) -> None:
        self.ids = array("q")
        self.rows, self.cols, self.codes, self.choices = array("i"), array("i"), array("B"), array("i")
        self.names: dict[int, tuple[int, str]] = {}
        self.modes: set[str] = set()

    def add(self, sid: int, mode: str, values: list[tuple[int, int, int, str | None]]) -> None:
        row = len(self.ids)
        self.ids.append(sid)
        self.modes.add(mode)
        names = self.names
        for level, code, choices, name in values:
            self.rows.append(row)
            self.cols.append(level - 1)
            self.codes.append(code)
            self.choices.append(choices)
            if name and (level not in names or sid < names[level][0]):
                names[level] = (sid, name)

    def finish(self, fmt: str, truncated: int | None) -> PredictionColumns:
        ids = np.frombuffer(self.ids, dtype=np.int64) if len(self.ids) else np.zeros(0, np.int64)
        rows = np.frombuffer(self.rows, dtype=np.int32) if len(self.rows) else np.zeros(0, np.int32)
        cols = np.frombuffer(self.cols, dtype=np.int32) if len(self.cols) else np.zeros(0, np.int32)
        from hiertrain.core.functional import MAX_DEPTH

        top = int(cols.max()) + 1 if cols.size else 0
        deepest = (top, int(ids[rows[cols == top - 1]].max())) if top else (1, None)
        if top > MAX_DEPTH:  # kept for the error `tensors` raises; the arrays stop at MAX_DEPTH
            keep = cols < MAX_DEPTH
            rows, cols = rows[keep], cols[keep]
            codes, choice_counts = np.frombuffer(self.codes, dtype=np.uint8)[keep], np.frombuffer(self.choices, dtype=np.int32)[keep]
        else:
            codes, choice_counts = np.frombuffer(self.codes, dtype=np.uint8), np.frombuffer(self.choices, dtype=np.int32)
        width = min(top, MAX_DEPTH)
        n = ids.shape[0]
        code = np.zeros((n, width), dtype=np.uint8)
        present = np.zeros((n, width), dtype=bool)
        choices = np.zeros((n, width), dtype=np.int32)
        code[rows, cols] = codes
        present[rows, cols] = True
        choices[rows, cols] = choice_counts
        order = np.argsort(ids, kind="stable")
        names = [self.names.get(level + 1, (0, None))[1] for level in range(width)]
        return PredictionColumns(
            ids[order], code[order], present[order], choices[order], names, set(self.modes), fmt, truncated, deepest
        )


def read_columns(path: str | Path, mode: str | None = None) -> PredictionColumns:
    """Our JSONL or the paper's JSON list as arrays; the same files and errors as `read_predictions`."""
    import json

    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError:
        return from_samples(*_loaded(_reference(path, mode)))
    with f:
        head = f.read(4096)
        if head.lstrip()[:1] == b"[" or mode is not None:
            f.close()
            return from_samples(*_loaded(_reference(path, mode)))
        f.seek(0)
        fast = _decoder()
        decode, errors = fast if fast else (json.loads, (ValueError,))
        builder = _Builder()
        truncated, lineno = None, 0
        for raw in f:
            lineno += 1
            try:
                obj = decode(raw.decode("utf-8"))  # decoded first: msgspec skips unknown fields unchecked
                builder.add(*_fast_sample(obj))
                continue
            except _Slow:
                pass
            except errors:
                pass
            except UnicodeDecodeError:
                pass
            # The reference rules for this one line (a cut-off last line is left out).
            sample = _slow_line(path, raw, lineno, not raw.endswith(b"\n"))  # only the last line lacks "\n"
            if sample is None:
                truncated = lineno
                break
            builder.add(*sample)
    columns = builder.finish("jsonl", truncated)
    if len(columns) and np.any(columns.ids[1:] == columns.ids[:-1]):
        _reference(path)  # names the repeated id and its first line
        raise HierError(f"{path}: a sample id appears twice")
    return columns


def _slow_line(path: Path, raw: bytes, lineno: int, last_unterminated: bool):
    """One line through the reference rules: (id, mode, values), None for a cut-off last line, or
    the reference reader's error."""
    import json

    from hiertrain.core.predictions import NOT_PREDICTIONS_HINT, _sample_from_json

    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HierError(f"{path}: not a text file: {NOT_PREDICTIONS_HINT}") from None
    if lineno == 1 and line.lstrip().startswith("{"):
        _reference(path)  # a whole-file JSON object (run.json, ...) gets its own message
    line = line[:-1] if line.endswith("\n") else line
    if not line.strip():
        raise HierError(f"{path}:{lineno}: blank line")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        if last_unterminated:
            return None
        raise HierError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
    sample = _sample_from_json(obj, f"{path}:{lineno}")
    values = []
    for lv in sample.levels:
        choices = len(lv.options) or int((lv.detail or {}).get("candidates") or 0)
        code = (ASKED if lv.asked else 0) | (CORRECT if lv.asked and lv.correct else 0) | (PARSED if lv.parsed or not lv.asked else 0)
        values.append((lv.level, code, choices, lv.name))
    return sample.id, sample.mode, values


def _loaded(loaded) -> tuple[list, str, int | None]:
    return loaded.samples, loaded.format, loaded.truncated_line
