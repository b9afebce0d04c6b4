"""`hiertrain score PRED.jsonl|PRED.json [--json] [--protocol paper [--cub]] [--taxonomy T]`: every
metric, recomputed from a predictions file.

Reads our JSONL or the paper's result JSON (see hiertrain.metrics.predictions), so numbers from either
are computed by the same code. `--json` prints the metrics.json layout the report reads.
`--protocol paper` scores as the paper's utils/metric.py does (hiertrain.paper.paper_metric): level 1
dropped unless `--cub`, the text-mode leaf counted correct, comparisons on the option text.
`--taxonomy` adds the measures that need it (mistake severity, path consistency:
hiertrain.metrics.placement); without one the output says they were not computed.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from hiertrain.metrics.metric_labels import (
    MEASURE_LABELS,
    NO_TAXONOMY,
    PER_LEVEL_LABELS,
    format_measure,
    format_percent,
    full_labels,
)

_LABELS = full_labels()


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
        "--protocol",
        choices=("hiertrain", "paper"),
        default="hiertrain",
        help="paper: reproduce the paper's utils/metric.py (drops level 1 unless --cub; text leaf counted correct)",
    )
    parser.add_argument("--cub", action="store_true", help="--protocol paper: keep level 1 (the paper's --cub flag)")
    parser.add_argument(
        "--ignore-level",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="do not score level N (1-based), e.g. a level with a single class; repeatable",
    )
    parser.add_argument(
        "--taxonomy",
        default=None,
        metavar="JSON",
        help="the taxonomy the predictions were made with: adds mistake severity (LCA depth, tree distance) and path consistency",
    )
    parser.add_argument(
        "--drop-trivial-levels",
        action="store_true",
        help="with --taxonomy: drop its single-class levels, as data.drop_trivial_levels did for the run",
    )
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap replicates over images for the intervals (0 = none; default 1000)")
    parser.add_argument("--ci", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the resampling (default 0)")


def score(args: argparse.Namespace) -> dict[str, Any]:
    """Read the file in one pass into arrays (hiertrain.metrics.columnar), compute every metric on all
    samples at once, return the JSON-ready result."""
    from hiertrain.base.errors import HierError

    protocol = getattr(args, "protocol", "hiertrain")
    if protocol == "paper":
        from hiertrain.metrics.predictions import read_predictions

        loaded = read_predictions(args.predictions, None if args.mode == "auto" else args.mode)
        if not loaded.samples:
            raise HierError(f"{args.predictions}: no predictions in the file")
        return _score_paper(args, loaded)
    from hiertrain.metrics.columnar import read_columns

    taxonomy_path = getattr(args, "taxonomy", None)
    taxonomy = None
    if taxonomy_path:
        from hiertrain.taxonomy.taxonomy import Taxonomy

        taxonomy = Taxonomy.from_json(
            taxonomy_path, on_multi_parent="first", drop_trivial_levels=getattr(args, "drop_trivial_levels", False)
        )
    elif getattr(args, "drop_trivial_levels", False):
        raise HierError("--drop-trivial-levels only applies with --taxonomy")
    columns = read_columns(args.predictions, None if args.mode == "auto" else args.mode, taxonomy=taxonomy)
    if not len(columns):
        raise HierError(f"{args.predictions}: no predictions in the file")
    if getattr(args, "cub", False):
        raise HierError("--cub only applies with --protocol paper (hiertrain's protocol scores every asked level)")
    from hiertrain.metrics.columnar import grouped_scores
    from hiertrain.metrics.functional import json_values  # torch: once the file is good

    try:
        correct, asked, parsed = columns.tensors()
    except HierError as err:
        raise HierError(f"{args.predictions}: {err}") from None
    codes = columns.placement(asked.shape[1]) if taxonomy is not None else (None, None)
    for n in args.ignore_level:
        if not 1 <= n <= asked.shape[1]:
            raise HierError(f"--ignore-level {n}: the file has levels 1..{asked.shape[1]}")
        asked[:, n - 1] = False
    from hiertrain.metrics.bootstrap import bootstrap_intervals

    n_boot, ci, seed = getattr(args, "bootstrap", 1000), getattr(args, "ci", 0.95), getattr(args, "bootstrap_seed", 0)
    intervals = bootstrap_intervals(correct, asked, parsed, n_boot=n_boot, ci=ci, seed=seed, lca=codes[0], links=codes[1])
    names = columns.names + [None] * (asked.shape[1] - len(columns.names))
    return {
        "file": str(args.predictions),
        "format": columns.format,
        "protocol": "hiertrain",
        "truncated_line": columns.truncated_line,
        "num_samples": len(columns),
        "num_scored": int(asked.any(1).sum()),
        "level_names": [name or f"level{i + 1}" for i, name in enumerate(names)],
        "level_asked": asked.sum(0).tolist(),
        "leaf_label": _leaf_label(columns.modes),
        **json_values(grouped_scores(correct, asked, parsed, *codes)),  # = functional.hierarchical_scores (+ taxonomy_scores)
        "taxonomy": str(taxonomy_path) if taxonomy is not None else None,
        **({} if taxonomy is not None else {"taxonomy_note": NO_TAXONOMY + " (pass --taxonomy)"}),
        "intervals": intervals,
        "chance": columns.chance(asked.shape[1], set(args.ignore_level)),
        **(_circular(args, asked.shape[1]) or {}),
    }


def _circular(args: argparse.Namespace, depth: int) -> dict[str, Any] | None:
    """A circular run's file (each level lists its rotations, so the first line names them): the
    first rotation's plain metrics and the letter bias, recomputed from the rotations' picks."""
    with open(args.predictions, encoding="utf-8") as f:
        if '"rotations"' not in f.readline():
            return None
    from hiertrain.metrics.circular import circular_metrics
    from hiertrain.metrics.predictions import read_predictions

    loaded = read_predictions(args.predictions, None if args.mode == "auto" else args.mode)
    return circular_metrics(loaded.samples, depth, frozenset(args.ignore_level))


def _leaf_label(modes: set[str]) -> str:
    from hiertrain.protocol.prompts import leaf_label

    return leaf_label("text") if modes == {"text"} else "leaf" if modes == {"image"} else "leaf (image) / deepest asked level (text)"


def _score_paper(args: argparse.Namespace, loaded) -> dict[str, Any]:
    """The paper's utils/metric.py on this file: its own records, or ours in its result format."""
    from hiertrain.base.errors import HierError
    from hiertrain.paper.paper_metric import paper_scores
    from hiertrain.metrics.predictions import to_paper_results

    if args.ignore_level:
        raise HierError("--ignore-level does not apply to --protocol paper (it drops level 1 itself; --cub keeps it)")
    if getattr(args, "taxonomy", None):
        raise HierError("--taxonomy does not apply to --protocol paper (the paper's script has no severity measures)")
    if loaded.format == "paper":
        items = json.loads(open(args.predictions, encoding="utf-8").read())
        if args.mode != "auto":  # the mode only matters for our reading of the file, not the paper's
            items = [{**item, "mode": args.mode} for item in items]
    else:
        items = to_paper_results(loaded.samples)
    scores = paper_scores(items, cub=args.cub, source=str(args.predictions))
    first = scores.pop("first_level")
    names: dict[int, str] = {}
    for sample in loaded.samples:
        for lv in sample.levels:
            if lv.name:
                names.setdefault(lv.level, lv.name)
    width = len(scores["per_level_accuracy"])
    modes = {s.mode for s in loaded.samples}
    return {
        "file": str(args.predictions),
        "format": loaded.format,
        "protocol": "paper",
        "cub": bool(args.cub),
        "truncated_line": loaded.truncated_line,
        "num_samples": len(loaded.samples),
        "level_names": [names.get(first + i, f"level{first + i}") for i in range(width)],
        "leaf_label": "leaf (named in the question: counted correct, as the paper's text scripts)"
        if "text" in modes
        else "leaf",
        **scores,
    }


def _ci(result: dict[str, Any], key: str, level: int | None = None) -> str:
    """` [low, high]` in percent when the result has that interval, else ''."""
    bounds = (result.get("intervals") or {}).get(key)
    if level is not None:
        bounds = bounds[level] if bounds and level < len(bounds) else None
    return "" if not bounds else f"  [{100 * bounds[0]:.2f}, {100 * bounds[1]:.2f}]"


def format_table(result: dict[str, Any]) -> str:
    """The result as an aligned text table (percentages; `[low, high]` = the bootstrap interval)."""
    head = f"{result['file']} ({result['format']}, {result['num_samples']} samples"
    if result["num_scored"] != result["num_samples"]:
        why = "without a level past level 1" if result.get("protocol") == "paper" and not result["cub"] else "with no level asked"
        head += f", {result['num_samples'] - result['num_scored']} {why}"
    if result["truncated_line"] is not None:
        head += f"; cut-off line {result['truncated_line']} ignored"
    paper = result.get("protocol") == "paper"
    if paper:
        kept = "level 1 kept (--cub)" if result["cub"] else "level 1 dropped"
        head += f"; the paper's utils/metric.py protocol, {kept}"
    lines = [head + ")", ""]
    labels = {**_LABELS, "leaf_accuracy": f"{result.get('leaf_label', 'leaf')} accuracy"}
    width = max([len(v) for v in labels.values()] + [len(full) for key, (_, full) in MEASURE_LABELS.items() if key in result])
    digits = 4 if paper else 2  # the paper's script prints 4 decimals
    lines += [
        f"{label:<{width}}  {format_percent(result.get(key), digits, missing='n/a', suffix='%'):>10}{_ci(result, key)}"
        for key, label in labels.items()
        if key in result or key != "path_consistency"
    ]
    taxonomy_rows = [(key, label) for key, (_, label) in MEASURE_LABELS.items() if key in result]
    for key, label in taxonomy_rows:
        bounds = (result.get("intervals") or {}).get(key)  # in levels / edges, not percent
        ci = f"  [{bounds[0]:.2f}, {bounds[1]:.2f}]" if bounds else ""
        lines.append(f"{label:<{width}}  {format_measure(result[key]):>10}{ci}")
    if result.get("taxonomy_note"):
        lines.append(result["taxonomy_note"])
    chance = result.get("chance") or {}
    if chance.get("hca") is not None:
        lines.append(f"{'chance HCA (uniform guess)':<{width}}  {format_percent(chance['hca'], missing='n/a', suffix='%'):>10}")
    lines += ["", f"{'level':<6} {'name':<20} {'asked':>7}  {'accuracy':>8}"]
    first = 1 if not paper or result["cub"] else 2
    for i, (name, n, acc) in enumerate(zip(result["level_names"], result["level_asked"], result["per_level_accuracy"])):
        lines.append(f"{i + first:<6} {name:<20} {n:>7}  {format_percent(acc, missing='n/a', suffix='%'):>8}{_ci(result, 'per_level_accuracy', i)}")
    lines += _severity_table(result)
    settings = result.get("intervals") or {}
    if settings.get("bootstrap"):
        lines += ["", f"[low, high]: {100 * settings['ci']:g}% {settings['method']} ({settings['bootstrap']} replicates, seed {settings['seed']})"]
    return "\n".join(lines)


def _severity_table(result: dict[str, Any]) -> list[str]:
    """Per level: accuracy given the parent right, mean LCA depth / distance of the wrong picks, and
    the severity histogram (wrong picks per LCA depth); the taxonomy columns only with a taxonomy."""
    if "conditional_accuracy" not in result:  # the paper's protocol
        return []
    keys = ["conditional_accuracy"] + [k for k in ("mistake_lca_depth_per_level", "mistake_distance_per_level") if k in result]
    head = f"{'level':<6} " + "  ".join(f"{PER_LEVEL_LABELS[k]:>18}" for k in keys)
    lines = ["", head]
    for i in range(len(result["conditional_accuracy"])):
        cells = [format_percent(result["conditional_accuracy"][i], missing="n/a", suffix="%")]
        cells += [format_measure(result[k][i], missing="n/a") for k in keys[1:]]
        lines.append(f"{i + 1:<6} " + "  ".join(f"{c:>18}" for c in cells))
    if "mistake_severity" in result:
        counts = result["mistake_severity"]
        lines += ["", "mistake severity (wrong picks by LCA depth: 0 = they meet above level 1)"]
        lines += [f"  LCA depth {d}: {n}" for d, n in enumerate(counts)]
        lines.append(f"  no taxonomy node (unparseable / not a node): {result['mistakes_unplaced']}")
    return lines


def run(args: argparse.Namespace) -> int:
    result = score(args)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0
