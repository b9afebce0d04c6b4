"""run.json and metrics.json as typed models, so a reader names the file and field it cannot read.

Both files carry `schema_version` (`SCHEMA_VERSION`, written first); a file without it is
version 0 (written before the models) and reads the same, so every existing run dir still
loads. A file from a newer hiertrain (a version above ours) is refused in one line.

Unknown keys policy: a key the model does not type is kept verbatim (`RunJson.data`,
`MetricsJson.data`) and never refused: run kinds add their own run.json keys, and run identity
(runs/meta.py) is every run.json key but `NOT_IDENTITY`, so dropping one would loosen resume.
A typed field of the wrong type is a one-line `HierError`: `<file>: field '<name>' is <value>, not <type>`.
`schema_version` only says how the file is laid out: it is in `NOT_IDENTITY`, so old runs resume.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from hiertrain.base.errors import HierError
from hiertrain.protocol.protocol import QuestionProtocol

SCHEMA_VERSION = 1  # the run.json / metrics.json layout this hiertrain writes and reads
RUN_JSON = "run.json"
METRICS_JSON = "metrics.json"

_MISSING = object()


def load_json(path: str | os.PathLike) -> Any:
    """A run file's JSON; one-line HierError naming the file (and line) when it is not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise HierError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    except UnicodeDecodeError:
        raise HierError(f"{path}: not a text file") from None


def _number(x: Any) -> bool:
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))


def _int(x: Any) -> bool:
    return x is None or (isinstance(x, int) and not isinstance(x, bool))


def _str(x: Any) -> bool:
    return x is None or isinstance(x, str)


def _bool(x: Any) -> bool:
    return x is None or isinstance(x, bool)


def _numbers(x: Any) -> bool:
    return x is None or (isinstance(x, list) and all(_number(v) for v in x))


def _names(x: Any) -> bool:
    return x is None or (isinstance(x, list) and all(isinstance(v, str) for v in x))


def _object(x: Any) -> bool:
    return x is None or isinstance(x, dict)


def _chance(x: Any) -> bool:
    return x is None or (isinstance(x, dict) and _number(x.get("hca")) and _numbers(x.get("per_level_accuracy")))


def _bounds(x: Any) -> bool:
    return not x or (isinstance(x, list) and len(x) == 2 and all(_number(v) for v in x))


def _intervals(x: Any) -> bool:
    """`{metric: [low, high] | per-level list of [low, high] | null, ...}` (+ `ci`, `bootstrap`)."""
    if x is None:
        return True
    if not isinstance(x, dict):
        return False
    for key, value in x.items():
        if key in ("ci", "bootstrap", "resamples", "seed"):
            continue
        if isinstance(value, list) and value and (isinstance(value[0], list) or value[0] is None):
            if not all(_bounds(b) for b in value):
                return False
        elif not (isinstance(value, (int, float, str, bool)) or _bounds(value)):
            return False
    return True


# What each checker accepts, as the refusal says it.
_WHAT: dict[Callable[[Any], bool], str] = {
    _number: "a number", _int: "an integer", _str: "a string", _bool: "true or false",
    _numbers: "a list of numbers", _names: "a list of names", _object: "an object",
    _chance: "an object with a number 'hca'", _intervals: "an object of [low, high] intervals",
}  # fmt: skip


def _version(path: Path, obj: dict[str, Any]) -> int:
    version = obj.get("schema_version", 0)
    if not _int(version) or version is None or version < 0:
        raise HierError(f"{path}: field 'schema_version' is {json.dumps(version)[:80]}, not an integer")
    if version > SCHEMA_VERSION:
        raise HierError(f"{path}: schema_version {version} is newer than this hiertrain reads ({SCHEMA_VERSION}); upgrade hiertrain")
    return version


def _typed(cls: type, path: Path, obj: Any, what: str) -> Any:
    """Build `cls` from a JSON object: each typed field checked (missing: its default), the
    whole object kept in `data`."""
    if not isinstance(obj, dict):
        raise HierError(f"{path}: not a {what} object (a JSON {type(obj).__name__})")
    values: dict[str, Any] = {"path": path, "data": dict(obj), "schema_version": _version(path, obj)}
    for f in fields(cls):
        check = f.metadata.get("check")
        if check is None:
            continue
        value = obj.get(f.name, _MISSING)
        if value is _MISSING:
            continue  # the dataclass default: what a run written before the field meant
        if not check(value):
            text = json.dumps(value)
            raise HierError(f"{path}: field '{f.name}' is {text if len(text) <= 80 else text[:80] + '...'}, not {_WHAT[check]}")
        values[f.name] = value
    return cls(**values)


def _f(check: Callable[[Any], bool], default: Any = None) -> Any:
    return field(default=default, metadata={"check": check})


@dataclass(frozen=True)
class RunJson:
    """A run.json as the report reads it (docs/ARCHITECTURE.md, "Run directories"). Missing
    fields read as what a run written before them meant."""

    path: Path
    data: dict[str, Any]
    schema_version: int = 0
    kind: str = _f(_str, "eval")
    model: str | None = _f(_str)
    model_name: str | None = _f(_str)
    dataset: str | None = _f(_str)
    questions: str | None = _f(_str)
    questions_sha256: str | None = _f(_str)
    mode: str | None = _f(_str, "image")
    prompt_variant: int | None = _f(_int)
    answer: str | None = _f(_str)
    seed: int | None = _f(_int)
    num_samples: int | None = _f(_int)
    skipped: int | None = _f(_int, 0)
    created: str | None = _f(_str)
    run_name: str | None = _f(_str)
    split: str | None = _f(_str)
    condition: str | None = _f(_str)
    backend: str | None = _f(_str)
    answer_parser: str | None = _f(_str)
    inference: str | None = _f(_str, "independent")
    circular: bool | None = _f(_bool, False)
    taxonomy: str | None = _f(_str)
    level_names: list[str] | None = _f(_names)

    @property
    def protocol(self) -> QuestionProtocol | None:
        """The question protocol of a run over questions (eval, lora); None for a probe run."""
        return None if self.kind == "probe" else QuestionProtocol.from_json(self.data)

    @classmethod
    def from_json(cls, obj: Any, path: str | os.PathLike = RUN_JSON) -> RunJson:
        """Check a run.json object (`path` only names it in errors)."""
        return _typed(cls, Path(path), obj, "run.json")

    @classmethod
    def read(cls, path: str | os.PathLike) -> RunJson:
        """`<run_dir>/run.json` (or that file); one-line HierError naming file and field."""
        path = Path(path)
        file = path / RUN_JSON if path.is_dir() else path
        return cls.from_json(load_json(file), file)


@dataclass(frozen=True)
class MetricsJson:
    """A metrics.json as the tables read it (hiertrain.metrics.functional + the run dir's
    additions: intervals, chance, circular, open set)."""

    path: Path
    data: dict[str, Any]
    schema_version: int = 0
    hca: float | None = _f(_number)
    leaf_accuracy: float | None = _f(_number)
    point_overlap: float | None = _f(_number)
    strict_point_overlap: float | None = _f(_number)
    top_overlap: float | None = _f(_number)
    hierarchical_f1: float | None = _f(_number)
    hierarchical_precision: float | None = _f(_number)
    hierarchical_recall: float | None = _f(_number)
    path_consistency: float | None = _f(_number)
    unparseable_rate: float | None = _f(_number)
    num_samples: int | None = _f(_number)
    num_skipped: int | None = _f(_number)
    mistake_lca_depth: float | None = _f(_number)
    mistake_distance: float | None = _f(_number)
    mistakes_unplaced: int | None = _f(_number)
    per_level_accuracy: list[float | None] | None = _f(_numbers)
    conditional_accuracy: list[float | None] | None = _f(_numbers)
    mistake_severity: list[int] | None = _f(_numbers)
    level_names: list[str] | None = _f(_names)
    leaf_label: str | None = _f(_str)
    taxonomy: str | None = _f(_str)
    taxonomy_note: str | None = _f(_str)
    chance: dict[str, Any] | None = _f(_chance)
    intervals: dict[str, Any] | None = _f(_intervals)
    open_set: dict[str, Any] | None = _f(_object)
    circular: dict[str, Any] | None = _f(_object)

    @classmethod
    def from_json(cls, obj: Any, path: str | os.PathLike = METRICS_JSON) -> MetricsJson:
        """Check a metrics.json object (`path` only names it in errors)."""
        return _typed(cls, Path(path), obj, "metrics")

    @classmethod
    def read(cls, path: str | os.PathLike) -> MetricsJson:
        """A metrics.json file; one-line HierError naming file and field (or the JSON error's line)."""
        return cls.from_json(load_json(path), path)

    @classmethod
    def empty(cls) -> MetricsJson:
        """No metrics (a missing twin run): every field None."""
        return cls(Path(METRICS_JSON), {})

    def __getitem__(self, key: str) -> Any:
        """The file's value as written (dict-style reads, as before the typed model)."""
        return self.data[key]

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def __bool__(self) -> bool:
        """An empty metrics.json (`{}`) has no row, as before the model."""
        return bool(self.data)

    @property
    def placed(self) -> bool:
        """Whether the run had a taxonomy to place its mistakes in (`mistake_severity` written)."""
        return "mistake_severity" in self.data

    def interval(self, key: str) -> Any:
        """The bootstrap interval of metric `key` (`intervals`), or None."""
        return (self.intervals or {}).get(key)

    def chance_of(self, key: str) -> Any:
        """Chance level of metric `key` (`chance`), or None."""
        return (self.chance or {}).get(key)


def versioned(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` with this hiertrain's `schema_version` first (what every writer writes)."""
    return {"schema_version": SCHEMA_VERSION, **{k: v for k, v in obj.items() if k != "schema_version"}}


def checked_run_json(obj: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """The run.json object a writer writes: versioned and checked against `RunJson` (a wrong
    type fails at write time, naming the field, not later in the report)."""
    out = versioned(obj)
    RunJson.from_json(out, path)
    return out


def checked_metrics_json(obj: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """The metrics.json object a writer writes: versioned and checked against `MetricsJson`."""
    out = versioned(obj)
    MetricsJson.from_json(out, path)
    return out
