"""How metrics are shown to people: one label map and one percent formatter for every table.

`metrics.json` keeps fractions in [0, 1]; tables (summary.txt, `hiertrain score`, the LoRA
before/after markdown, the report) show percentages. Keeping both here means a metric is
named and rounded the same way everywhere.
"""

from __future__ import annotations

from typing import Any

# metric key -> (short label for narrow tables, full label)
METRIC_LABELS: dict[str, tuple[str, str]] = {
    "hca": ("HCA", "hierarchical consistent accuracy"),
    "leaf_accuracy": ("leaf accuracy", "leaf accuracy"),
    "point_overlap": ("point overlap", "point-overlap ratio"),
    "strict_point_overlap": ("strict point overlap", "strict point-overlap ratio"),
    "top_overlap": ("top overlap", "top-overlap ratio"),
    "hierarchical_f1": ("hierarchical F1", "hierarchical F1"),
    "hierarchical_precision": ("hierarchical P", "hierarchical precision"),
    "hierarchical_recall": ("hierarchical R", "hierarchical recall"),
    "path_consistency": ("path consistency", "path consistency of the picks"),
    "unparseable_rate": ("unparseable", "unparseable answers"),
}

# measures that are not fractions (shown as plain numbers, never as percent): key -> (short, full)
MEASURE_LABELS: dict[str, tuple[str, str]] = {
    "mistake_lca_depth": ("mistake LCA depth", "mean LCA depth of wrong picks (levels shared)"),
    "mistake_distance": ("mistake distance", "mean tree distance of wrong picks (edges)"),
    "mistakes_unplaced": ("unplaced mistakes", "wrong picks with no taxonomy node (not in the means)"),
}

# per-level lists: key -> column label
PER_LEVEL_LABELS: dict[str, str] = {
    "per_level_accuracy": "accuracy",
    "conditional_accuracy": "acc | parent right",
    "mistake_lca_depth_per_level": "mistake LCA depth",
    "mistake_distance_per_level": "mistake distance",
    "mistake_severity": "wrong picks at this LCA depth",
}

# where the taxonomy measures are absent (no taxonomy given), outputs say so with this line
NO_TAXONOMY = "no taxonomy given: mistake severity and path consistency not computed"


def short_labels() -> dict[str, str]:
    """metric key -> short label, in table order."""
    return {key: short for key, (short, _) in METRIC_LABELS.items()}


def full_labels() -> dict[str, str]:
    """metric key -> full label, in table order."""
    return {key: full for key, (_, full) in METRIC_LABELS.items()}


def format_measure(value: Any, digits: int = 2, missing: str = "-") -> str:
    """A non-fraction measure (a mean depth or distance, a count) as plain text."""
    if value is None:
        return missing
    return str(value) if isinstance(value, int) else f"{float(value):.{digits}f}"


def percent(value: Any, digits: int = 2) -> float | None:
    """A fraction as a rounded percentage (None stays None): the numbers report.json holds."""
    return None if value is None else round(100.0 * float(value), digits)


def format_percent(
    value: Any, digits: int = 2, signed: bool = False, missing: str = "-", width: int = 0, suffix: str = ""
) -> str:
    """A fraction as percent text, e.g. `33.33`, `+4.17`, `25.00%`; `missing` for None."""
    if value is None:
        return f"{missing:>{width}}"
    sign = "+" if signed else ""
    return f"{100 * float(value):{sign}{width}.{digits}f}{suffix}"
