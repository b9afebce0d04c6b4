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
    "unparseable_rate": ("unparseable", "unparseable answers"),
}


def short_labels() -> dict[str, str]:
    """metric key -> short label, in table order."""
    return {key: short for key, (short, _) in METRIC_LABELS.items()}


def full_labels() -> dict[str, str]:
    """metric key -> full label, in table order."""
    return {key: full for key, (_, full) in METRIC_LABELS.items()}


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
