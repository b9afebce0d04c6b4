"""The predictions file: what evaluation writes, `score` and reports read.

Our format is JSONL, one finished sample a line, so a run appends as it goes and a killed run
leaves at most one cut-off last line (read back without it, and reported)::

    {"id": 0, "image": ..., "label": ..., "split": ..., "mode": "image"|"text", "levels": [
     {"level": 1, "name": "order", "truth": ..., "options": [...], "reply": "...",
      "letter": "B"|null, "predicted": ...|null, "correct": true, "asked": true,
      "question": "Based on taxonomy, ...\nA. ...\nAnswer with ..."}, ...]}

``letter`` null (and ``predicted`` null) = unparseable answer. In text mode the leaf is not asked.
``question`` is the exact user text put to the model at that level (prompt, lettered options,
answer instruction; the system prompt and chat template come on top), so a run can be audited
against the paper's wording; null when nothing was asked or the evaluator asks no text (CLIP).
Files written before it existed have no ``question`` key and read as null.

The paper's result format (its evaluation scripts) is a JSON list, one dict per sample with
``ground_truth_levelN``, ``prediction_levelN`` (the reply), ``predicted_levelN_letter``,
``predicted_levelN`` (the chosen option's text) and ``choices_levelN`` (letter -> text);
"Unknown"/"Error" mark an unparseable answer. Its text-mode files do not ask the leaf and store
predicted = label there; we write a ``mode`` key so that survives a round trip, and a file
without one is read as image mode unless the caller says ``mode="text"``.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from hiertrain.base.errors import HierError

MODES = ("image", "text")
PAPER_UNPARSED = ("Unknown", "Error")
_PAPER_TRUTH = re.compile(r"ground_truth_level(\d+)")


@dataclass
class LevelPrediction:
    """One asked (or, for a text-mode leaf, not asked) question of a sample."""

    level: int  # 1-based depth
    truth: str
    options: list[str] = field(default_factory=list)
    reply: str | None = None
    letter: str | None = None
    predicted: str | None = None
    correct: bool = False
    asked: bool = True
    name: str | None = None
    question: str | None = None  # the user text put to the model (None: not asked / no text)
    # Condition-specific record (hiertrain.protocol.conditions): binary {"statements": [...]}, open
    # {"match", "node", "found"}; written only when set, so plain runs keep their bytes.
    detail: dict[str, Any] | None = None

    @property
    def parsed(self) -> bool:
        """Whether an option was read out of the reply."""
        return self.letter is not None or self.predicted is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "name": self.name,
            "truth": self.truth,
            "options": list(self.options),
            "reply": self.reply,
            "letter": self.letter,
            "predicted": self.predicted,
            "correct": self.correct,
            "asked": self.asked,
            "question": self.question,
            **({"detail": self.detail} if self.detail is not None else {}),
        }


@dataclass
class SamplePrediction:
    """All levels of one sample, in depth order."""

    id: int
    levels: list[LevelPrediction]
    image: str | None = None
    label: str | None = None
    split: str | None = None
    mode: str = "image"
    request: str | None = None  # digest of the exact request asked (hiertrain.runs.request_digest)

    def to_json(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "image": self.image,
            "label": self.label,
            "split": self.split,
            "mode": self.mode,
            "levels": [lv.to_json() for lv in self.levels],
        }
        if self.request is not None:  # absent on lines written before the digest (and off run dirs)
            out["request"] = self.request
        return out


@dataclass
class LoadedPredictions:
    """A predictions file as read: its samples, its format, and the cut-off last line if any."""

    samples: list[SamplePrediction]
    format: str  # "jsonl" | "paper"
    truncated_line: int | None = None


# ---------------------------------------------------------------- our JSONL


def _line(pred: SamplePrediction) -> str:
    return json.dumps(pred.to_json(), ensure_ascii=False) + "\n"


def write_predictions(preds: Iterable[SamplePrediction], path: str | Path) -> None:
    """Write (replace) a JSONL predictions file."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(_line(p) for p in preds)


def append_predictions(preds: Iterable[SamplePrediction], path: str | Path) -> None:
    """Append finished samples, one line each, flushed so a kill loses at most a partial line.

    A failed write (full disk) is a one-line HierError naming the file; the lines already
    written stay, and a cut-off last line is left out when the file is read back (resume)."""
    from hiertrain.base.atomic import write_error

    try:
        with open(path, "a", encoding="utf-8") as f:
            for p in preds:
                f.write(_line(p))
                f.flush()
    except OSError as err:
        raise write_error(path, err) from None


def _require(d: dict, key: str, types: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise HierError(f"{where}: missing key '{key}'")
    value = d[key]
    if not isinstance(value, types) or (types is int and isinstance(value, bool)):
        raise HierError(f"{where}: '{key}' has the wrong type ({type(value).__name__})")
    return value


def _level_from_json(d: Any, where: str) -> LevelPrediction:
    if not isinstance(d, dict):
        raise HierError(f"{where}: a level must be an object")
    lv = LevelPrediction(
        level=_require(d, "level", int, where),
        truth=_require(d, "truth", str, where),
        options=list(d.get("options") or []),
        reply=d.get("reply"),
        letter=d.get("letter"),
        predicted=d.get("predicted"),
        correct=_require(d, "correct", bool, where),
        asked=_require(d, "asked", bool, where),
        name=d.get("name"),
        question=d.get("question"),
        detail=d.get("detail"),
    )
    if lv.level < 1:
        raise HierError(f"{where}: level numbers start at 1, got {lv.level}")
    if lv.asked and lv.correct and not lv.parsed:
        raise HierError(f"{where}: level {lv.level} is marked correct but has no parsed answer")
    return lv


def _sample_from_json(d: Any, where: str) -> SamplePrediction:
    if not isinstance(d, dict):
        raise HierError(f"{where}: a sample must be a JSON object")
    levels = [_level_from_json(lv, where) for lv in _require(d, "levels", list, where)]
    numbers = [lv.level for lv in levels]
    if len(set(numbers)) != len(numbers):
        raise HierError(f"{where}: a level appears twice ({numbers})")
    mode = d.get("mode", "image")
    if mode not in MODES:
        raise HierError(f"{where}: mode must be one of {MODES}, got {mode!r}")
    return SamplePrediction(
        id=_require(d, "id", int, where),
        levels=sorted(levels, key=lambda lv: lv.level),
        image=d.get("image"),
        label=d.get("label"),
        split=d.get("split"),
        mode=mode,
        request=_request_of(d, where),
    )


def _request_of(d: dict[str, Any], where: str) -> str | None:
    request = d.get("request")
    if request is not None and not isinstance(request, str):
        raise HierError(f"{where}: request must be a digest string, got {request!r}")
    return request


def _read_jsonl(path: Path, text: str) -> LoadedPredictions:
    # Split on "\n" only: ensure_ascii=False leaves U+2028 and friends raw inside strings.
    lines = text.split("\n") if text else []
    complete = text.endswith("\n")
    if complete:
        lines.pop()  # the empty string after the final newline
    samples: list[SamplePrediction] = []
    first_line: dict[int, int] = {}
    truncated = None
    for lineno, line in enumerate(lines, start=1):
        last_unterminated = lineno == len(lines) and not complete
        if not line.strip():
            raise HierError(f"{path}:{lineno}: blank line")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            if last_unterminated:  # a write cut off by a kill
                truncated = lineno
                break
            raise HierError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        sample = _sample_from_json(obj, f"{path}:{lineno}")
        if sample.id in first_line:
            raise HierError(f"{path}:{lineno}: sample id {sample.id} already on line {first_line[sample.id]}")
        first_line[sample.id] = lineno
        samples.append(sample)
    samples.sort(key=lambda s: s.id)
    return LoadedPredictions(samples, "jsonl", truncated)


# ---------------------------------------------------------------- the paper's result JSON


def _paper_levels(item: dict) -> list[int]:
    """Level numbers with a ground truth, sorted as numbers (level10 after level9)."""
    found = (_PAPER_TRUTH.fullmatch(k) for k in item)
    return sorted(int(m.group(1)) for m in found if m and item[m.group(0)] is not None)


def _paper_unparsed(value: Any) -> bool:
    return value is None or value in PAPER_UNPARSED


def from_paper_results(items: Any, source: str = "<memory>", mode: str | None = None) -> list[SamplePrediction]:
    """Samples from the paper's result list. "Correct" = normalised predicted equals truth.

    `mode` None takes each record's "mode" key, else "image" (every level asked, as the
    paper's metric script counts); "text" leaves each sample's deepest level unasked.
    """
    from hiertrain.taxonomy.taxonomy import normalize_label

    if not isinstance(items, list):
        raise HierError(f"{source}: the paper's result file must hold a JSON list")
    samples = []
    for index, item in enumerate(items):
        where = f"{source}: record {index}"
        if not isinstance(item, dict):
            raise HierError(f"{where}: not a JSON object")
        sample_mode = mode or item.get("mode", "image")
        if sample_mode not in MODES:
            raise HierError(f"{where}: mode must be one of {MODES}, got {sample_mode!r}")
        numbers = _paper_levels(item)
        if not any(_PAPER_TRUTH.fullmatch(k) for k in item):
            raise HierError(f"{where}: no ground_truth_levelN key, not the paper's result format: {NOT_PREDICTIONS_HINT}")
        levels = []
        for n in numbers:
            for key in (f"predicted_level{n}", f"choices_level{n}"):
                if key not in item:
                    raise HierError(f"{where}: missing key '{key}'")
            truth, predicted = item[f"ground_truth_level{n}"], item[f"predicted_level{n}"]
            choices = item[f"choices_level{n}"]
            if not isinstance(truth, str) or not isinstance(choices, dict):
                raise HierError(f"{where}: ground_truth_level{n} must be text and choices_level{n} a letter->text object")
            parsed = not _paper_unparsed(predicted)
            letter = item.get(f"predicted_level{n}_letter")
            levels.append(
                LevelPrediction(
                    level=n,
                    truth=truth,
                    options=list(choices.values()),
                    reply=item.get(f"prediction_level{n}"),
                    letter=letter if parsed and not _paper_unparsed(letter) else None,
                    predicted=str(predicted) if parsed else None,
                    correct=parsed and normalize_label(str(predicted)) == normalize_label(truth),
                    asked=not (sample_mode == "text" and n == numbers[-1]),
                )
            )
        samples.append(
            SamplePrediction(
                id=index,
                levels=levels,
                image=item.get("image"),
                label=item.get("label"),
                split=item.get("split"),
                mode=sample_mode,
            )
        )
    return samples


def _paper_letter(options: list[str], text: str) -> str:
    from hiertrain.protocol.prompts import LETTERS
    from hiertrain.taxonomy.taxonomy import normalize_label

    wanted = normalize_label(text)
    return next((LETTERS[i] for i, o in enumerate(options) if normalize_label(o) == wanted), "Unknown")


def to_paper_results(preds: Iterable[SamplePrediction]) -> list[dict[str, Any]]:
    """Our samples in the paper's result format (plus a "mode" key)."""
    from hiertrain.protocol.prompts import LETTERS

    out = []
    for p in preds:
        item: dict[str, Any] = {"image": p.image, "label": p.label, "mode": p.mode}
        deepest = max((lv.level for lv in p.levels), default=0)
        for lv in p.levels:
            n = lv.level
            if len(lv.options) > len(LETTERS):
                raise HierError(f"sample {p.id}: level {n} has {len(lv.options)} options; at most {len(LETTERS)}")
            if lv.asked:
                predicted = lv.predicted if lv.parsed and lv.predicted is not None else "Unknown"
                letter = lv.letter if lv.parsed and lv.letter is not None else "Unknown"
            elif p.mode == "text" and n == deepest:  # the paper stores the label as the leaf answer
                predicted = p.label if p.label is not None else lv.truth
                letter = _paper_letter(lv.options, predicted)
            else:
                raise HierError(f"sample {p.id}: level {n} is not asked; the paper's format cannot say so")
            item[f"ground_truth_level{n}"] = lv.truth
            item[f"prediction_level{n}"] = lv.reply
            item[f"predicted_level{n}_letter"] = letter
            item[f"predicted_level{n}"] = predicted
            item[f"choices_level{n}"] = {LETTERS[i]: o for i, o in enumerate(lv.options)}
        out.append(item)
    return out


def write_paper_results(preds: Iterable[SamplePrediction], path: str | Path) -> None:
    """Write the paper's result JSON (indent 4, as its scripts do)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(to_paper_results(preds), f, indent=4, ensure_ascii=False)


# ---------------------------------------------------------------- either format


NOT_PREDICTIONS_HINT = "give a run's predictions.jsonl (one sample a line) or the paper's result .json (a list)"


def read_predictions(path: str | Path, mode: str | None = None) -> LoadedPredictions:
    """Read our JSONL or the paper's JSON list (told apart by the first character)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise HierError(f"{path}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise HierError(f"{path}: not a text file: {NOT_PREDICTIONS_HINT}") from None
    if text.lstrip().startswith("{") and "\n" in text.strip():
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict):  # run.json, metrics.json, ...: one object, not a line per sample
            raise HierError(f"{path}: a JSON object, not predictions: {NOT_PREDICTIONS_HINT}")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise HierError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        return LoadedPredictions(from_paper_results(items, str(path), mode), "paper")
    loaded = _read_jsonl(path, text)
    if mode is not None:
        raise HierError(f"{path}: our JSONL records its own mode; do not pass one")
    return loaded


def load_predictions(path: str | Path, mode: str | None = None) -> list[SamplePrediction]:
    """The samples of a predictions file; warns when a cut-off last line was left out."""
    loaded = read_predictions(path, mode)
    if loaded.truncated_line is not None:
        warnings.warn(f"{path}:{loaded.truncated_line}: cut-off last line ignored (run was interrupted?)", stacklevel=2)
    return loaded.samples


def tensor_width(deepest: int, sample: Any, depth: int | None = None) -> int:
    """The metric tensors' width: `depth` when given, else the deepest level present; a level
    deeper than that (or than the supported depth) is one line naming its sample."""
    from hiertrain.metrics.functional import MAX_DEPTH

    if depth is not None and not 1 <= depth <= MAX_DEPTH:
        raise HierError(f"depth {depth}: 1 to {MAX_DEPTH} levels are supported")
    limit = f"the data's depth {depth}" if depth is not None else f"the {MAX_DEPTH} levels supported"
    if deepest > (depth or MAX_DEPTH):
        raise HierError(f"sample {sample}: level {deepest} is deeper than {limit}")
    return depth or deepest


def to_tensors(preds: list[SamplePrediction], depth: int | None = None):
    """(correct, asked, parsed) bool tensors [N, W] for `hiertrain.metrics.classes`; column = level - 1.

    The one "pad to depth, then tensors" step: W = `depth` when given (the data's depth, so
    per-level results have one entry per level even when no sample in `preds` reaches the
    deepest), else the deepest level present. Columns a sample lacks are padding: not asked.
    """
    import torch

    deepest, sample = max(((lv.level, p.id) for p in preds for lv in p.levels), default=(1, None))
    width = tensor_width(deepest, sample, depth)
    correct = torch.zeros(len(preds), width, dtype=torch.bool)
    asked = torch.zeros_like(correct)
    parsed = torch.ones_like(correct)
    for row, p in enumerate(preds):
        for lv in p.levels:
            col = lv.level - 1
            asked[row, col] = lv.asked
            correct[row, col] = lv.asked and lv.correct
            parsed[row, col] = lv.parsed or not lv.asked
    return correct, asked, parsed
