"""A predictions file read in one streaming pass into compact per-sample x level arrays.

`hiertrain score` (and the other whole-file readers) need, per sample and level, only whether it
was asked, right and parsed, and how many options it offered; building a `SamplePrediction` with
a `LevelPrediction` per level (`hiertrain.metrics.predictions.read_predictions`) costs ~13 KB a
record and keeps the whole file's text in memory. Here each line is decoded and reduced to a few
small integers at once, so memory is O(N x levels) bytes.

One set of rules: the fast path accepts only lines that are plainly well formed (the types
`_sample_from_json` requires); anything else, and any whole-file problem (a duplicate id, a JSON
object instead of lines, bad UTF-8), is handed to the reference reader in
`hiertrain.metrics.predictions`, which raises its own one-line error. So both readers accept the same
files and give the same messages. The paper's result JSON (a list) goes through the reference
reader and is then reduced to the same arrays.

Lines are decoded with msgspec when it is installed (only the needed fields, ~2.5x faster than
`json`), else with the standard library; the result is the same.

With a taxonomy (`read_columns(path, taxonomy=...)`) each level also gets its placement codes
(`hiertrain.metrics.placement`: ``lca`` int8, ``links`` int32), computed in the same pass, so the
severity and path measures need no second read either.
"""

from __future__ import annotations

import functools
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hiertrain.base.errors import HierError

MAX_DEPTH = 20  # = hiertrain.metrics.functional.MAX_DEPTH (tested), without importing torch for a resume

# per-level code bits
ASKED, CORRECT, PARSED, OPEN = 1, 2, 4, 8  # OPEN: no options shown (open set; choices = candidates)


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
    lca: np.ndarray | None = None  # [N, W] int8 placement codes (read with a taxonomy), else None
    links: np.ndarray | None = None  # [N, W] int32

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def width(self) -> int:
        return int(self.code.shape[1])

    def tensors(self, depth: int | None = None):
        """(correct, asked, parsed) bool tensors [N, W] exactly as `predictions.to_tensors` makes them."""
        import torch

        from hiertrain.metrics.predictions import tensor_width

        width = tensor_width(*self.deepest, depth)
        code = np.zeros((len(self), width), dtype=np.uint8)
        code[:, : self.width] = self.code
        asked = (code & ASKED) != 0
        correct = asked & ((code & CORRECT) != 0)
        parsed = ((code & PARSED) != 0) | ~asked
        return torch.from_numpy(correct), torch.from_numpy(asked), torch.from_numpy(parsed)

    def placement(self, depth: int | None = None):
        """(lca int8, links int32) tensors [N, W] as `placement.placement_tensors` makes them (call
        `tensors` first for its checks); HierError when the file was read without a taxonomy."""
        import torch

        if self.lca is None or self.links is None:
            raise HierError("placement codes need the taxonomy (read_columns(..., taxonomy=...))")
        width = max(depth or self.deepest[0], self.width)
        lca = np.full((len(self), width), -1, dtype=np.int8)
        links = np.zeros((len(self), width), dtype=np.int32)
        lca[:, : self.width], links[:, : self.width] = self.lca, self.links
        return torch.from_numpy(lca), torch.from_numpy(links)

    def chance(self, depth: int | None = None, ignore: frozenset[int] | set[int] = frozenset()) -> dict[str, Any]:
        """`hiertrain.metrics.chance.chance_levels` on these arrays, bit for bit: the same divisions
        in the same order (cumulative sums add left to right, as its loop does)."""
        from hiertrain.metrics.chance import chance_rule

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
        opened = asked & ((self.code & OPEN) != 0)
        return {
            "rule": chance_rule(int((asked & ~opened).sum()), int(opened.sum())),
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
    from typing import Annotated, Literal, Optional

    # the reference's own type rules (`_require`: int that is not a bool, str, bool), checked by msgspec
    needed = [("level", Annotated[int, msgspec.Meta(ge=1)]), ("truth", str), ("correct", bool), ("asked", bool)]
    optional = [("options", Optional[list], None)] + [(name, Any, None) for name in ("letter", "predicted", "name", "detail")]
    level = msgspec.defstruct("Level", needed + optional)
    sample = msgspec.defstruct("Sample", [("id", int), ("levels", list[level]), ("mode", Literal["image", "text"], "image")])
    return msgspec.json.Decoder(sample).decode, (msgspec.DecodeError, msgspec.ValidationError)


def _add_struct(builder: "_Builder", obj: Any) -> None:
    """A msgspec-decoded sample (types already checked) into the builder; _Slow for what the
    reference reader would reject."""
    sid, packed, names = obj.id, builder.packed, builder.names
    start = len(packed)
    try:
        _add_levels(obj.levels, sid, packed, names)
    except _Slow:
        del packed[start:]  # the reference reader takes this line from the start
        raise
    builder.ids.append(sid)
    builder.counts.append(len(obj.levels))
    builder.modes.add(obj.mode)
    builder.place(sid, obj.levels)


def _add_levels(levels: list, sid: int, packed: array, names: dict) -> None:
    seen = 0
    for lv in levels:
        level, asked = lv.level, lv.asked
        parsed = lv.letter is not None or lv.predicted is not None
        if asked:
            if lv.correct:
                if not parsed:
                    raise _Slow
                code = 7
            else:
                code = 5 if parsed else 1
        else:
            code = 4
        options = lv.options
        choices = len(options) if options else 0
        if not choices and lv.detail:
            choices = _candidates(lv.detail)
            code |= OPEN
        bit = 1 << level if level < 63 else 0
        if seen & bit or not bit:
            raise _Slow  # a level twice, or one deeper than any file holds: the reference decides
        seen |= bit
        packed.append((level - 1) | code << 8 | choices << 12)
        name = lv.name
        if name and (level not in names or sid < names[level][0]):
            names[level] = (sid, name)


def _candidates(detail: Any) -> int:
    if not isinstance(detail, dict):
        raise _Slow
    try:
        value = int(detail.get("candidates") or 0)
    except (TypeError, ValueError):
        raise _Slow from None
    if not 0 <= value < 1 << 20:
        raise _Slow
    return value


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
        choices = _candidates(detail)
    code = (ASKED if asked else 0) | (CORRECT if asked and correct else 0) | (PARSED if parsed or not asked else 0)
    if not options and choices:
        code |= OPEN
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
    from hiertrain.metrics.predictions import read_predictions

    return read_predictions(path, mode)


def from_samples(samples: list, fmt: str, truncated: int | None = None, taxonomy: Any = None) -> PredictionColumns:
    """Arrays of already-read `SamplePrediction`s (sorted by id); placement codes with a taxonomy."""
    builder = _Builder(taxonomy)
    for s in samples:
        builder.add(s.id, s.mode, _sample_values(s), s.levels)
    return builder.finish(fmt, truncated)


def _sample_values(sample: Any) -> list[tuple[int, int, int, str | None]]:
    """(level, code, choices, name) per level of a `SamplePrediction` read by the reference reader."""
    values = []
    for lv in sample.levels:
        choices = len(lv.options) or int((lv.detail or {}).get("candidates") or 0)
        code = (ASKED if lv.asked else 0) | (CORRECT if lv.asked and lv.correct else 0) | (PARSED if lv.parsed or not lv.asked else 0)
        code |= OPEN if not lv.options and choices else 0
        values.append((lv.level, code, choices, lv.name))
    return values


class _Builder:
    """Per sample its id and level count; per level one packed int: level - 1 (8 bits), the code
    (3 bits), the choices (20 bits)."""

    def __init__(self, taxonomy: Any = None) -> None:
        self.ids, self.counts, self.packed = array("q"), array("i"), array("q")
        self.names: dict[int, tuple[int, str]] = {}
        self.modes: set[str] = set()
        self.placer = None
        if taxonomy is not None:
            from hiertrain.metrics.placement import TaxonomyPlacer

            self.placer = taxonomy if isinstance(taxonomy, TaxonomyPlacer) else TaxonomyPlacer(taxonomy)
        self.lca, self.links = array("b"), array("i")  # per level, in `packed` order (with a taxonomy)

    def place(self, sid: int, levels: list) -> None:
        """The placement codes of one sample's levels (objects or dicts), when reading with a taxonomy."""
        if self.placer is not None:
            for lca, links in self.placer.codes(sid, levels):
                self.lca.append(lca)
                self.links.append(links)

    def add(self, sid: int, mode: str, values: list[tuple[int, int, int, str | None]], levels: list | None = None) -> None:
        self.place(sid, levels or [])
        self.ids.append(sid)
        self.counts.append(len(values))
        self.modes.add(mode)
        names = self.names
        for level, code, choices, name in values:
            if not 1 <= level <= 255 or not 0 <= choices < 1 << 20:
                self.too_deep = max(getattr(self, "too_deep", (0, 0)), (level, sid))
                level = min(level, 255)
                choices = min(max(choices, 0), (1 << 20) - 1)
            self.packed.append((level - 1) | code << 8 | choices << 12)
            if name and (level not in names or sid < names[level][0]):
                names[level] = (sid, name)

    def finish(self, fmt: str, truncated: int | None) -> PredictionColumns:
        ids = np.array(self.ids, dtype=np.int64)
        counts = np.array(self.counts, dtype=np.int64)
        packed = np.array(self.packed, dtype=np.int64)
        rows = np.repeat(np.arange(ids.shape[0]), counts)
        cols = packed & 0xFF
        codes = ((packed >> 8) & 15).astype(np.uint8)
        choice_counts = (packed >> 12).astype(np.int32)
        placed = self.placer is not None
        lca_v, links_v = np.array(self.lca, dtype=np.int8), np.array(self.links, dtype=np.int32)
        top = int(cols.max()) + 1 if cols.size else 0
        deepest = (top, int(ids[rows[cols == top - 1]].max())) if top else (1, None)
        deepest = max(deepest, getattr(self, "too_deep", deepest))
        if top > MAX_DEPTH:  # kept for the error `tensors` raises; the arrays stop at MAX_DEPTH
            keep = cols < MAX_DEPTH
            rows, cols, codes, choice_counts = rows[keep], cols[keep], codes[keep], choice_counts[keep]
            if placed:
                lca_v, links_v = lca_v[keep], links_v[keep]
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
        lca = links = None
        if placed:
            lca, links = np.full((n, width), -1, dtype=np.int8), np.zeros((n, width), dtype=np.int32)
            lca[rows, cols], links[rows, cols] = lca_v, links_v
            lca, links = lca[order], links[order]
        return PredictionColumns(
            ids[order], code[order], present[order], choices[order], names, set(self.modes), fmt, truncated, deepest,
            lca, links,
        )


def read_columns(path: str | Path, mode: str | None = None, taxonomy: Any = None) -> PredictionColumns:
    """Our JSONL or the paper's JSON list as arrays; the same files and errors as `read_predictions`.
    With `taxonomy` (a `Taxonomy` or `TaxonomyPlacer`) also the placement codes, `.lca` / `.links`;
    a truth the taxonomy does not hold is a HierError naming the file and line."""
    import json

    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError:
        return _whole(path, mode, taxonomy)
    with f:
        head = f.read(4096)
        if head.lstrip()[:1] == b"[" or mode is not None:
            f.close()
            return _whole(path, mode, taxonomy)
        f.seek(0)
        fast = _decoder()
        decode, errors = fast if fast else (json.loads, (ValueError,))
        builder = _Builder(taxonomy)
        truncated, lineno = None, 0
        for raw in f:
            lineno += 1
            try:
                obj = decode(raw.decode("utf-8"))  # decoded first: msgspec skips unknown fields unchecked
                if fast:
                    _add_struct(builder, obj)
                else:
                    builder.add(*_fast_sample(obj), obj["levels"])
                continue
            except HierError as err:  # the taxonomy does not fit this line
                raise HierError(f"{path}:{lineno}: {err}") from None
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
            try:
                builder.add(*sample)
            except HierError as err:
                raise HierError(f"{path}:{lineno}: {err}") from None
    columns = builder.finish("jsonl", truncated)
    if len(columns) and np.any(columns.ids[1:] == columns.ids[:-1]):
        _reference(path)  # names the repeated id and its first line
        raise HierError(f"{path}: a sample id appears twice")
    return columns


def _slow_line(path: Path, raw: bytes, lineno: int, last_unterminated: bool):
    """One line through the reference rules: (id, mode, values), None for a cut-off last line, or
    the reference reader's error."""
    import json

    from hiertrain.metrics.predictions import NOT_PREDICTIONS_HINT, _sample_from_json

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
    return sample.id, sample.mode, _sample_values(sample), sample.levels


def _loaded(loaded) -> tuple[list, str, int | None]:
    return loaded.samples, loaded.format, loaded.truncated_line


def _whole(path: Path, mode: str | None, taxonomy: Any) -> PredictionColumns:
    """A file the reference reader takes whole (the paper's list, a given mode, an unreadable path)."""
    try:
        return from_samples(*_loaded(_reference(path, mode)), taxonomy=taxonomy)
    except HierError as err:
        if str(err).startswith(str(path)):
            raise
        raise HierError(f"{path}: {err}") from None


def grouped_scores(correct, asked, parsed=None, lca=None, links=None) -> dict:
    """`functional.hierarchical_scores` (and, with the placement codes, `functional.taxonomy_scores`),
    bit for bit, in time O(distinct rows): every state is a sum over samples, so it is the functional
    core's update on one sample of each distinct row, times how many samples have that row; then
    the core's own division."""
    import torch

    from hiertrain.metrics import functional as F

    hit, asked, parsed = F.prepare(correct, asked, parsed)
    codes = [] if lca is None or links is None else [lca.to(torch.long), links.to(torch.long)]
    rows = torch.cat([hit.long(), asked.long(), parsed.long(), *codes], dim=1)
    if rows.shape[0]:
        _, inverse, counts = torch.unique(rows, dim=0, return_inverse=True, return_counts=True)
    else:
        inverse, counts = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    first = torch.full((counts.numel(),), inverse.numel(), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(inverse.numel()), reduce="amin"
    )
    h, a, p = hit[first][None], asked[first][None], parsed[first][None]  # [1, U, L]: U independent "metrics"

    def total(*states):
        return tuple((s.long() * (counts if s.ndim == 1 else counts[:, None])).sum(0) for s in states)

    hits, predicted, asked_n = total(*F.hierarchical_f1_update(h, a, p))
    out = {
        "hca": F.ratio(*total(*F.hca_update(h, a))),
        "leaf_accuracy": F.ratio(*total(*F.leaf_accuracy_update(h, a))),
        "per_level_accuracy": F.ratio(*total(*F.per_level_update(h, a))),
        "point_overlap": F.sample_ratio_compute(*total(*F.point_overlap_update(h, a))),
        "strict_point_overlap": F.sample_ratio_compute(*total(*F.strict_point_overlap_update(h, a))),
        "top_overlap": F.sample_ratio_compute(*total(*F.top_overlap_update(h, a))),
        "hierarchical_f1": F.hierarchical_f1_compute(hits, predicted, asked_n),
        "hierarchical_precision": F.hierarchical_precision_compute(hits, predicted),
        "hierarchical_recall": F.hierarchical_recall_compute(hits, asked_n),
        "conditional_accuracy": F.ratio(*total(*F.conditional_accuracy_update(h, a))),
        "unparseable_rate": F.ratio(*total(*F.unparseable_update(a, p))),
    }
    if not codes:
        return out
    c = codes[0][first][None], codes[1][first][None]
    lca_sum, distance_sum, mistakes, unplaced, histogram = total(*F.mistake_severity_update(h, a, p, c[0]))
    return {
        **out,
        "path_consistency": F.ratio(*total(*F.path_consistency_update(a, p, c[1]))),
        **F.mistake_severity_compute(lca_sum, distance_sum, mistakes),
        "mistake_severity": histogram,
        "mistakes_unplaced": unplaced.sum(-1),
    }
