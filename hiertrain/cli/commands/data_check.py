"""`hiertrain data check`: is this taxonomy (and question file) fit to evaluate on?

Prints leaves, depth range and classes per level, every taxonomy finding, and for a
question file every record whose label, truths or options disagree with the taxonomy
(counted by kind, the first few listed as FILE:LINE). Exit 0 when nothing is wrong,
1 when the taxonomy cannot be loaded or the question file has problems; taxonomy
findings that do not stop loading (a single-class level, ...) are warnings and fail
only with --strict.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hiertrain.base.errors import HierError
from hiertrain.taxonomy.taxonomy import MULTI_PARENT_POLICIES, Taxonomy, normalize_label


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--taxonomy", required=True, type=Path,
                        help="taxonomy JSON ({leaf: [root, ..., leaf]}, iNat records or edges)")
    parser.add_argument("--questions", type=Path, help="question JSONL to check against the taxonomy")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--on-multi-parent", choices=MULTI_PARENT_POLICIES, default="error",
                        help="a node with two parents: fail (error) or keep the first parent seen (first)")
    parser.add_argument("--drop-trivial-levels", action="store_true", help="drop levels that have a single class")
    parser.add_argument("--max-listed", type=int, default=10, help="question problems listed in full (default 10)")
    parser.add_argument("--strict", action="store_true", help="taxonomy warnings also make the exit code 1")


@dataclass
class QuestionCheck:
    """What is wrong with a question file, by kind, with FILE:LINE lines in file order."""

    path: str
    records: int = 0
    splits: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    lines: list[str] = field(default_factory=list)

    def add(self, kind: str, line_no: int, message: str) -> None:
        self.kinds[kind] += 1
        self.lines.append(f"{self.path}:{line_no}: {message}")

    @property
    def total(self) -> int:
        return sum(self.kinds.values())


def _parse_tolerant(line: str, i: int, path: Path, check: QuestionCheck):
    """Line `i` (0-based) as a record, or None with the malformed line counted as a problem.
    Lines without level keys are image-list entries (`hiertrain.taxonomy.question_bank.read_image_list`)
    and only their labels are checked."""
    from hiertrain.taxonomy.question_bank import (
        IMAGE_LIST_KEYS, SAME_AFTER_NORMALISATION, QuestionRecord, check_question, level_keys, require_strings,
    )  # fmt: skip

    where = f"{path}:{i + 1}"
    try:
        obj = json.loads(line)
        if not isinstance(obj, dict):
            raise HierError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if level_keys(obj) or any(k.startswith("choices_level") for k in obj):
            check_question(obj, where)
        else:  # an image list (image, label, split): only its labels can be checked
            require_strings(obj, IMAGE_LIST_KEYS, where)
    except json.JSONDecodeError as err:
        check.add("malformed record", i + 1, f"not valid JSON ({err.msg} at column {err.colno})")
    except HierError as err:
        message = str(err).removeprefix(f"{where}: ")
        check.add("duplicate options" if SAME_AFTER_NORMALISATION in message else "malformed record", i + 1, message)
    else:
        return QuestionRecord(raw=obj, sample_id=i)
    return None


class _Repeats:
    """Records seen so far by id (`question_bank.record_id`): a repeat is a problem naming both
    lines (the loader refuses it), and its other findings are its first's, so it is not checked again."""

    def __init__(self, check: QuestionCheck) -> None:
        self.check, self.first = check, {}

    def new(self, record) -> bool:
        from hiertrain.taxonomy.question_bank import record_id, repeat_message

        key, line = record_id(record.raw), record.sample_id + 1
        if key in self.first:
            self.check.add("repeated record", line, repeat_message(self.first[key], key))
            return False
        self.first[key] = line
        return True


def _records_tolerant(path: Path, check: QuestionCheck) -> list:
    """Every well-formed record of the whole file but repeats, each malformed line or repeat
    counted as a problem (read_questions stops at the first one; a check must list them all)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise HierError(f"{path}: not UTF-8 ({err.reason} at byte {err.start})") from None
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    repeats = _Repeats(check)
    parsed = [r for i, line in enumerate(lines) if (r := _parse_tolerant(line, i, path, check)) is not None]
    check.records = len(lines)
    return [r for r in parsed if repeats.new(r)]


class _NotStreamable(Exception):
    """A line break the whole-file reader sees but a byte stream does not (a lone CR)."""


def _stream_tolerant(path: Path, check: QuestionCheck) -> Iterator:
    """`_records_tolerant` one line at a time (a 1M-record bank is never held, only record ids):
    the same lines (CRLF read as LF, as text mode does), the same problems, the same UTF-8 error."""
    offset = 0
    repeats = _Repeats(check)
    with open(path, "rb") as f:
        for i, raw in enumerate(f):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise HierError(f"{path}: not UTF-8 ({err.reason} at byte {offset + err.start})") from None
            offset += len(raw)
            if line.endswith("\n"):
                line = line[:-2] if line.endswith("\r\n") else line[:-1]
            if "\r" in line:
                raise _NotStreamable
            record = _parse_tolerant(line, i, path, check)
            if record is not None and repeats.new(record):
                yield record


def check_questions(taxonomy: Taxonomy, path: Path) -> QuestionCheck:
    """Every record: well formed (read_questions' rules: an image named, truth among its options, no
    options equal after normalisation, no record twice), label resolves, levelN truths equal the
    taxonomy path.

    A plain file is checked one line at a time, keeping only counters, record ids and the problem
    lines; a gzipped or packaged one (small) is read whole."""
    from hiertrain.base.resources import resolve_data_path

    real = resolve_data_path(path)
    if real.is_file() and real.suffix != ".gz":
        result = QuestionCheck(str(path))
        try:
            lines = 0
            for rec in _stream_tolerant(path, result):
                _check_record(taxonomy, rec, result)
                lines += 1
        except _NotStreamable:
            return _check_whole(taxonomy, path)
        result.records = lines + result.kinds["malformed record"] + result.kinds["duplicate options"] + result.kinds["repeated record"]
        result.lines.sort(key=lambda s: int(s[len(result.path) + 1 :].split(":", 1)[0]))
        return result
    return _check_whole(taxonomy, path)


def _check_whole(taxonomy: Taxonomy, path: Path) -> QuestionCheck:
    from hiertrain.taxonomy.question_bank import read_questions

    result = QuestionCheck(str(path))
    try:
        records = read_questions(path)
        result.records = len(records)
    except HierError:
        if not path.is_file():
            raise
        records = _records_tolerant(path, result)
    for rec in records:
        _check_record(taxonomy, rec, result)
    result.lines.sort(key=lambda s: int(s[len(result.path) + 1 :].split(":", 1)[0]))
    return result


def _check_record(taxonomy: Taxonomy, rec, result: QuestionCheck) -> None:
    line = rec.sample_id + 1
    result.splits[str(rec.split)] += 1
    if rec.label not in taxonomy:  # not taxonomy.path(): its closest-match hint is slow in bulk
        result.add("unknown label", line, f"label '{rec.label}' not in {taxonomy.source}")
        return
    tax_path = taxonomy.path(rec.label)
    truths, choices = rec.truths, rec.choices
    asked = [i for i, t in enumerate(truths) if t is not None]
    if asked and max(asked) + 1 != len(tax_path):
        result.add(
            "level count", line, f"label '{rec.label}' has {max(asked) + 1} levels, taxonomy path has {len(tax_path)}"
        )
    for i, truth in enumerate(truths):
        key = f"level{i + 1}"
        if truth is None:
            if i < len(tax_path):
                result.add("missing level", line, f"{key} is missing or null; taxonomy has '{tax_path[i]}'")
            continue
        if i < len(tax_path) and normalize_label(truth) != normalize_label(tax_path[i]):
            result.add("truth mismatch", line, f"{key} '{truth}' != taxonomy '{tax_path[i]}' for '{rec.label}'")
        # check_question (read_questions' rules) already requires the truth among the options and
        # no options equal after normalisation


def _taxonomy_summary(tax: Taxonomy) -> dict:
    low, high = tax.depth_range()
    return {
        "source": tax.source,
        "leaves": len(tax),
        "depth": tax.depth,
        "path_lengths": [low, high],
        "levels": [
            {"level": i + 1, "name": name, "classes": n}
            for i, (name, n) in enumerate(zip(tax.level_names, tax.classes_per_level()))
        ],
        "warnings": tax.problems(),
    }


def _print_text(report: dict) -> None:
    tax = report.get("taxonomy")
    if tax:
        low, high = tax["path_lengths"]
        print(f"taxonomy: {tax['source']}")
        print(f"leaves: {tax['leaves']}")
        print(f"levels: {tax['depth']} (paths of {low}..{high} nodes)" if low != high else f"levels: {tax['depth']}")
        for lvl in tax["levels"]:
            print(f"  level{lvl['level']:<3} {lvl['name']:<12} {lvl['classes']} classes")
        print(f"classes per level: {'/'.join(str(lvl['classes']) for lvl in tax['levels'])}")
        print(f"warnings: {len(tax['warnings'])}")
        for line in tax["warnings"]:
            print(f"  warning: {line}")
    q = report.get("questions")
    if q:
        splits = ", ".join(f"{k}: {v}" for k, v in sorted(q["splits"].items()))
        print(f"questions: {q['file']} ({q['records']} records; {splits})")
        print(f"problems: {q['problems']}")
        for kind, n in sorted(q["by_kind"].items()):
            print(f"  {kind}: {n}")
        for line in q["listed"]:
            print(f"  {line}")
        if q["problems"] > len(q["listed"]):
            print(f"  ... {q['problems'] - len(q['listed'])} more (--max-listed to see them)")
    for err in report["errors"]:
        print(f"error: {err}")
    print("OK" if report["ok"] else "FAILED")


def run(args: argparse.Namespace) -> int:
    report: dict = {"errors": []}
    tax = None
    try:
        tax = Taxonomy.from_json(
            args.taxonomy, on_multi_parent=args.on_multi_parent, drop_trivial_levels=args.drop_trivial_levels
        )
        report["taxonomy"] = _taxonomy_summary(tax)
    except HierError as err:
        report["errors"].append(str(err))
    if tax is not None and args.questions is not None:
        try:
            check = check_questions(tax, args.questions)
        except HierError as err:
            report["errors"].append(str(err))
        else:
            report["questions"] = {
                "file": check.path,
                "records": check.records,
                "splits": dict(check.splits),
                "problems": check.total,
                "by_kind": dict(check.kinds),
                "listed": check.lines[: max(args.max_listed, 0)],
            }
    warnings = report.get("taxonomy", {}).get("warnings", [])
    failed = bool(report["errors"]) or report.get("questions", {}).get("problems", 0) > 0
    report["ok"] = not failed and not (args.strict and warnings)
    if args.json:
        json.dump(report, sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        _print_text(report)
    return 0 if report["ok"] else 1
