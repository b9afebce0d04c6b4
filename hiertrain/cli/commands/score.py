"""`hiertrain score PRED.jsonl|PRED.json [--json]`: every metric, recomputed from a predictions file.

Reads our JSONL or the paper's result JSON (see hiertrain.core.predictions), so numbers from either
are computed by the same code. `--json` prints the metrics.json layout the report reads.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

_LABELS = {
    "hca": "hierarchical consistent accuracy",
    "leaf_accuracy": "leaf accuracy",
    "point_overlap": "point-overlap ratio",
    "strict_point_overlap": "strict point-overlap ratio",
    "top_overlap": "top-overlap ratio",
    "hierarchical_f1": "hierarchical F1",
    "unparseable_rate": "unparseable answers",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("predictions", help="our predictions .jsonl or the paper's result .json")
    parser.add_argument("--json", action="store_true", help="print JSON (the metrics.json layout) instead of a table")
    parser.add_argument(
        "--mode",
        choices=("auto", "image", "text"),
        default="auto",
        help="paper files only: 'text' leaves each sample's leaf unasked (auto: the file's 'mode' key, else image)",
    )
    parser.add_argument(
        "--ignore-level",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="do not score level N (1-based), e.g. a level with a single class; repeatable",
    )


def score(args: argparse.Namespace) -> dict[str, Any]:
    """Read the file, compute every metric on all samples at once, return the JSON-ready result."""
    from hiertrain.core.errors import HierError
    from hiertrain.core.predictions import read_predictions, to_tensors

    loaded = read_predictions(args.predictions, None if args.mode == "auto" else args.mode)
    samples = loaded.samples
    if not samples:
        raise HierError(f"{args.predictions}: no predictions in the file")
    from hiertrain.core.functional import hierarchical_scores  # torch: once the file is good
    from hiertrain.core.metrics import json_values

    try:
        correct, asked, parsed = to_tensors(samples)
    except HierError as err:
        raise HierError(f"{args.predictions}: {err}") from None
    for n in args.ignore_level:
        if not 1 <= n <= asked.shape[1]:
            raise HierError(f"--ignore-level {n}: the file has levels 1..{asked.shape[1]}")
        asked[:, n - 1] = False
    names: list[str | None] = [None] * asked.shape[1]
    for sample in samples:
        for lv in sample.levels:
            names[lv.level - 1] = names[lv.level - 1] or lv.name
    return {
        "file": str(args.predictions),
        "format": loaded.format,
        "truncated_line": loaded.truncated_line,
        "num_samples": len(samples),
        "num_scored": int(asked.any(1).sum()),
        "level_names": [name or f"level{i + 1}" for i, name in enumerate(names)],
        "level_asked": asked.sum(0).tolist(),
        **json_values(hierarchical_scores(correct, asked, parsed)),
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def format_table(result: dict[str, Any]) -> str:
    """The result as an aligned text table (percentages)."""
    head = f"{result['file']} ({result['format']}, {result['num_samples']} samples"
    if result["num_scored"] != result["num_samples"]:
        head += f", {result['num_samples'] - result['num_scored']} with no level asked"
    if result["truncated_line"] is not None:
        head += f"; cut-off line {result['truncated_line']} ignored"
    lines = [head + ")", ""]
    width = max(len(v) for v in _LABELS.values())
    lines += [f"{label:<{width}}  {_pct(result[key]):>8}" for key, label in _LABELS.items()]
    lines += ["", f"{'level':<6} {'name':<20} {'asked':>7}  {'accuracy':>8}"]
    for i, (name, n, acc) in enumerate(zip(result["level_names"], result["level_asked"], result["per_level_accuracy"])):
        lines.append(f"{i + 1:<6} {name:<20} {n:>7}  {_pct(acc):>8}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    result = score(args)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0
