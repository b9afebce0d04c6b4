"""`hiertrain report --csv`: one row per evaluation run, for spreadsheets and papers.

Columns: run, model, dataset, mode, protocol (answer kind, prompt variant, split), samples,
skipped, then each scalar metric in percent with its bootstrap interval (`<metric>`,
`<metric>_low`, `<metric>_high`; empty where the run has none) and the chance HCA. Probe and LoRA
runs report other quantities (their own tables in report.md) and are not rows here.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from hiertrain.base.atomic import atomic_path

LEADERBOARD_METRICS = (
    "hca", "leaf_accuracy", "point_overlap", "strict_point_overlap", "top_overlap", "hierarchical_f1",
    "hierarchical_precision", "hierarchical_recall", "path_consistency", "unparseable_rate",
)  # fmt: skip (path consistency: empty for a run without a taxonomy)


def protocol(meta: dict[str, Any]) -> str:
    """How the run was scored, in one cell: `answer=logits variant=0 split=test`."""
    parts = [f"answer={meta.get('answer')}", f"variant={meta.get('prompt_variant')}"]
    if meta.get("split") is not None:
        parts.append(f"split={meta['split']}")
    return " ".join(parts)


def _pct(x: Any) -> float | None:
    return None if x is None else round(100.0 * float(x), 2)


def leaderboard_rows(runs: list[Any]) -> list[dict[str, Any]]:
    """One dict per evaluation run with metrics (runs as `hiertrain.report.build.Run`), sorted."""
    rows = []
    for run in sorted((r for r in runs if r.kind == "eval" and r.metrics), key=lambda r: (r.dataset, r.model, r.mode, r.name)):
        m = run.metrics  # hiertrain.runs.schema.MetricsJson
        intervals = m.intervals or {}
        row: dict[str, Any] = {
            "run": run.name,
            "model": run.model,
            "dataset": run.dataset,
            "mode": run.mode,
            "protocol": protocol(run.meta),
            "samples": m.num_samples,
            "skipped": run.info.skipped,
        }
        for name in LEADERBOARD_METRICS:
            bounds = m.interval(name)
            row[name] = _pct(getattr(m, name))
            row[f"{name}_low"] = _pct(bounds[0]) if bounds else None
            row[f"{name}_high"] = _pct(bounds[1]) if bounds else None
        row["chance_hca"] = _pct(m.chance_of("hca"))
        row["ci"] = intervals.get("ci") if intervals.get("bootstrap") else None
        rows.append(row)
    return rows


def write_leaderboard(runs: list[Any], path: str | Path) -> Path:
    """Write the leaderboard CSV (header always; a run per line); return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = leaderboard_rows(runs)
    columns = ["run", "model", "dataset", "mode", "protocol", "samples", "skipped"]
    for name in LEADERBOARD_METRICS:
        columns += [name, f"{name}_low", f"{name}_high"]
    columns += ["chance_hca", "ci"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path
