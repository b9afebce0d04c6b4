"""Two evaluation runs over the same questions, compared pairwise (`hiertrain compare A B`).

A paired comparison only means something when both runs answered the same questions: the same
question file (SHA-256 in run.json), the same mode, the same sample ids and, per sample, the same
asked levels. Anything else is refused with a one-line reason naming what differs. The
statistics are `hiertrain.metrics.paired` (difference B - A, paired bootstrap, exact McNemar).
The taxonomy measures (path consistency, mistake LCA depth / distance) are compared when both
runs name the same taxonomy (run.json `taxonomy`, or `--taxonomy`); otherwise the result says why not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiertrain.base.errors import HierError


@dataclass
class ComparedRun:
    """A run directory's run.json and its merged predictions (as arrays: hiertrain.metrics.columnar)."""

    path: Path
    info: Any  # hiertrain.runs.schema.RunJson
    columns: Any  # PredictionColumns

    @property
    def meta(self) -> dict[str, Any]:
        """run.json as written (every key)."""
        return self.info.data

    @property
    def name(self) -> str:
        return self.path.name


def load_run(path: str | Path) -> ComparedRun:
    """run.json + predictions.jsonl of an evaluation run; HierError naming what is missing."""
    from hiertrain.metrics.columnar import read_columns

    from hiertrain.runs.schema import RUN_JSON, RunJson

    path = Path(path)
    preds_path = path / "predictions.jsonl"
    if not (path / RUN_JSON).is_file():
        raise HierError(f"{path}: no run.json (not a run directory)")
    if not preds_path.is_file():
        raise HierError(f"{path}: no predictions.jsonl (compare needs evaluation runs)")
    return ComparedRun(path, RunJson.read(path), read_columns(preds_path))


def _asked(row: Any) -> list[int]:
    """The asked levels (1-based) of one row of `PredictionColumns.asked_levels()`."""
    return [int(i) + 1 for i in row.nonzero()[0]]


def same_questions_problem(a: ComparedRun, b: ComparedRun) -> str | None:
    """Why A and B are not over the same question set (one line), or None when they are."""
    for run in (a, b):
        if not run.info.questions_sha256:
            return f"{run.path}: run.json records no questions_sha256, so its question set is unknown"
    if a.info.questions_sha256 != b.info.questions_sha256:
        return (
            f"{a.name} and {b.name} used different question files ({a.info.questions} sha256 "
            f"{a.info.questions_sha256[:12]} vs {b.info.questions} sha256 {b.info.questions_sha256[:12]})"
        )
    if a.meta.get("mode") != b.meta.get("mode"):  # as written: a run.json without `mode` is not an image run here
        return f"{a.name} and {b.name} asked in different modes ({a.meta.get('mode')!r} vs {b.meta.get('mode')!r})"
    import numpy as np

    ids_a, ids_b = a.columns.ids, b.columns.ids
    if not np.array_equal(ids_a, ids_b):
        only = sorted(set(ids_a.tolist()) ^ set(ids_b.tolist()))
        return (
            f"{a.name} has {len(ids_a)} samples and {b.name} {len(ids_b)}; "
            f"{len(only)} ids are in only one of them (first: {only[0] if only else '?'})"
        )
    width = max(a.columns.width, b.columns.width)
    asked_a, asked_b = (np.pad(r.columns.asked_levels(), ((0, 0), (0, width - r.columns.width))) for r in (a, b))
    differ = np.nonzero((asked_a != asked_b).any(1))[0]
    if differ.size:
        row = int(differ[0])
        return f"sample {int(ids_a[row])}: {a.name} asked levels {_asked(asked_a[row])}, {b.name} asked {_asked(asked_b[row])}"
    return None


def run_taxonomy(a: ComparedRun, b: ComparedRun, given: str | None = None) -> tuple[Any, str | None]:
    """(the Taxonomy both runs were scored with, None) or (None, why the taxonomy measures are left out)."""
    from hiertrain.metrics.metric_labels import NO_TAXONOMY
    from hiertrain.taxonomy.taxonomy import Taxonomy

    paths = [given] * 2 if given else [r.info.taxonomy for r in (a, b)]
    drops = {bool(r.meta.get("drop_trivial_levels")) for r in (a, b)}
    if not all(paths):
        return None, f"{NO_TAXONOMY} (a run.json names no taxonomy; pass --taxonomy)"
    if paths[0] != paths[1] or len(drops) > 1:
        return None, f"{NO_TAXONOMY}: the runs name different taxonomies ({paths[0]} vs {paths[1]}; pass --taxonomy)"
    if not Path(paths[0]).is_file():
        return None, f"{NO_TAXONOMY}: taxonomy {paths[0]} not found (pass --taxonomy)"
    return Taxonomy.from_json(paths[0], on_multi_parent="first", drop_trivial_levels=drops.pop()), None


def compare_runs(
    path_a: str | Path, path_b: str | Path, n_boot: int = 1000, ci: float = 0.95, seed: int = 0, taxonomy: str | None = None
) -> dict[str, Any]:
    """The paired comparison of B against A (JSON-ready); HierError when not the same questions.
    `taxonomy`: the taxonomy file to place the picks with (default: the runs' run.json `taxonomy`)."""
    from hiertrain.metrics.columnar import read_columns
    from hiertrain.metrics.paired import paired_comparison

    a, b = load_run(path_a), load_run(path_b)
    problem = same_questions_problem(a, b)
    if problem:
        raise HierError(f"cannot compare: {problem}")
    if not len(a.columns):
        raise HierError(f"cannot compare: {a.path} has no predictions")
    tree, note = run_taxonomy(a, b, taxonomy)
    ta, tb = a.columns.tensors(), b.columns.tensors()
    width = max(ta[0].shape[1], tb[0].shape[1])
    ta, tb = _pad(ta, width), _pad(tb, width)
    if tree is not None:  # read again with the taxonomy: each pick's place (hiertrain.metrics.placement)
        ta = ta + read_columns(a.path / "predictions.jsonl", taxonomy=tree).placement(width)
        tb = tb + read_columns(b.path / "predictions.jsonl", taxonomy=tree).placement(width)
    result = paired_comparison(ta, tb, n_boot=n_boot, ci=ci, seed=seed)
    return {
        "taxonomy": str(tree.source) if tree is not None else None,
        **({"taxonomy_note": note} if note else {}),
        "a": {"path": str(a.path), "model": a.info.model_name or a.info.model},
        "b": {"path": str(b.path), "model": b.info.model_name or b.info.model},
        "dataset": a.info.dataset,
        "mode": a.meta.get("mode"),
        "level_names": a.info.level_names,
        **result,
    }


def _pad(tensors: tuple[Any, Any, Any], width: int) -> tuple[Any, Any, Any]:
    import torch

    correct, asked, parsed = tensors
    pad = width - correct.shape[1]
    if pad <= 0:
        return tensors
    return (
        torch.nn.functional.pad(correct, (0, pad)),
        torch.nn.functional.pad(asked, (0, pad)),
        torch.nn.functional.pad(parsed, (0, pad), value=True),
    )


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def difference_text(entry: dict[str, Any]) -> str:
    """`+d.dd [low, high]` in percentage points (no interval: just the difference)."""
    text = _pct(entry.get("difference"), signed=True)
    if entry.get("interval"):
        low, high = entry["interval"]
        text += f" [{100 * low:+.2f}, {100 * high:+.2f}]"
    return text


def format_comparison(result: dict[str, Any]) -> str:
    """A text table: A, B, B - A with its interval, McNemar p for HCA and leaf accuracy."""
    m = result["metrics"]
    lines = [
        f"A: {result['a']['path']}",
        f"B: {result['b']['path']}",
        f"{result['num_samples']} paired samples, mode {result['mode']}; "
        f"B - A in points, [{100 * result['ci']:g}% paired bootstrap, {result['bootstrap']} replicates]",
        "",
        f"{'metric':<22} {'A %':>7} {'B %':>7}  {'B - A [interval]':<28} McNemar",
    ]
    for name in ("hca", "leaf_accuracy", "point_overlap", "strict_point_overlap", "top_overlap",
                 "hierarchical_precision", "hierarchical_recall", "path_consistency"):  # fmt: skip
        if name not in m:
            continue
        e = m[name]
        test = ""
        if "mcnemar" in e:
            t = e["mcnemar"]
            test = f"p={t['p']:.4g} (A only {t['a_only']}, B only {t['b_only']})"
        lines.append(f"{name:<22} {_pct(e['a']):>7} {_pct(e['b']):>7}  {difference_text(e):<28} {test}")
    names = result.get("level_names") or []
    for i, e in enumerate(m["per_level_accuracy"]):
        label = f"level {i + 1}" + (f" {names[i]}" if i < len(names) else "")
        lines.append(f"{label[:22]:<22} {_pct(e['a']):>7} {_pct(e['b']):>7}  {difference_text(e):<28}")
    for i, e in enumerate(m.get("conditional_accuracy", [])[1:], start=1):
        label = f"L{i + 1} | L{i} right" + (f" {names[i]}" if i < len(names) else "")
        lines.append(f"{label[:22]:<22} {_pct(e['a']):>7} {_pct(e['b']):>7}  {difference_text(e):<28}")
    measures = [k for k in ("mistake_lca_depth", "mistake_distance") if k in m]
    if measures:
        lines += ["", f"{'mistakes (wrong picks)':<22} {'A':>7} {'B':>7}  B - A [interval]"]
        for name in measures:
            e = m[name]
            diff = _num(e.get("difference"), signed=True)
            if e.get("interval"):
                diff += f" [{e['interval'][0]:+.2f}, {e['interval'][1]:+.2f}]"
            lines.append(f"{name:<22} {_num(e['a']):>7} {_num(e['b']):>7}  {diff}")
    if result.get("taxonomy_note"):
        lines += ["", result["taxonomy_note"]]
    return "\n".join(line.rstrip() for line in lines)


def _num(x: float | None, signed: bool = False) -> str:
    """A mean depth / distance (levels, edges), not a percentage."""
    if x is None:
        return "-"
    return f"{x:+.2f}" if signed else f"{x:.2f}"
