"""The report's figures: what a researcher looks at rather than reads.

HCA vs leaf accuracy bars per model, per-level accuracy curves, probe accuracy vs layer, the
text-vs-visual HCA scatter with its least-squares fit, and one figure per severity / consistency
measure (mistake-severity histogram, hP vs hR, path consistency, conditional accuracy). Each
returns the PNG's file name.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hiertrain.base.atomic import atomic_path  # noqa: E402

def _save(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    with atomic_path(out / name) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return name


def _err(rows: list[dict], key: str) -> list[list[float]]:
    """Asymmetric error bars [[below], [above]] from each row's `<key>_ci` (0 where absent)."""
    below, above = [], []
    for r in rows:
        value, bounds = r.get(key), r.get(f"{key}_ci")
        ok = value is not None and bounds
        below.append(max(0.0, value - bounds[0]) if ok else 0.0)
        above.append(max(0.0, bounds[1] - value) if ok else 0.0)
    return [below, above]


def hca_vs_leaf(rows: list[dict], out: Path) -> str | None:
    """Grouped bars: leaf accuracy next to HCA (and text HCA) for each model x dataset, with the
    bootstrap intervals as error bars and the chance HCA of each question set as a red tick."""
    rows = [r for r in rows if r["hca"] is not None]
    if not rows:
        return None
    labels = [f"{r['model']}\n{r['dataset']}" for r in rows]
    series = [("leaf accuracy", "leaf_accuracy", "#9ecae1"), ("visual HCA", "hca", "#3182bd"), ("text HCA", "text_hca", "#e6550d")]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(rows) + 2), 3.8))
    for k, (name, key, color) in enumerate(series):
        xs = [i + (k - 1) * width for i in range(len(rows))]
        ys = [r[key] if r[key] is not None else 0.0 for r in rows]
        bars = ax.bar(xs, ys, width, label=name, color=color, yerr=_err(rows, key), capsize=2, ecolor="#444")
        chance_key = {"hca": "chance_hca", "text_hca": "text_chance_hca"}.get(key)
        if chance_key:
            for x, r in zip(xs, rows):
                if r.get(chance_key) is not None:
                    ax.hlines(r[chance_key], x - width / 2, x + width / 2, colors="#d62728", linewidth=2,
                              label="chance HCA" if x == xs[0] and key == "hca" else None)
        for bar, r in zip(bars, rows):
            if r[key] is not None:
                ax.annotate(f"{r[key]:.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title("Leaf accuracy vs hierarchical consistent accuracy")
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, out, "hca_vs_leaf.png")


def per_level(rows: list[dict], out: Path) -> str | None:
    """Accuracy by taxonomy level, one line per model x dataset x mode, with bootstrap error bars;
    dotted in the same colour: the chance level of that question set (1/#options per level)."""
    rows = [r for r in rows if r["levels"]]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for r in rows:
        names = list(r["levels"])
        cis = r.get("levels_ci") or {}
        ys = [r["levels"][n] for n in names]
        err = [[max(0.0, y - cis[n][0]) if n in cis else 0.0 for n, y in zip(names, ys)],
               [max(0.0, cis[n][1] - y) if n in cis else 0.0 for n, y in zip(names, ys)]]
        line = ax.errorbar(range(len(names)), ys, yerr=err, marker="o", capsize=3, label=f"{r['model']} · {r['dataset']} · {r['mode']}")
        chance = r.get("chance_levels") or {}
        if chance:
            xs = [i for i, n in enumerate(names) if n in chance]
            ax.plot(xs, [chance[names[i]] for i in xs], linestyle=":", color=line.lines[0].get_color(), linewidth=1)
    ax.plot([], [], linestyle=":", color="gray", label="chance (1/#options)")
    longest = max(rows, key=lambda r: len(r["levels"]))
    ax.set_xticks(range(len(longest["levels"])), list(longest["levels"]), rotation=20, fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Per-level accuracy (root → leaf)")
    ax.legend(fontsize=7)
    return _save(fig, out, "per_level_accuracy.png")


def scatter(rows: list[dict], out: Path) -> str | None:
    """Text HCA (x) against visual HCA (y) per model, with a least-squares line when it exists."""
    pts = [r for r in rows if r["hca"] is not None and r["text_hca"] is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    for ds in sorted({r["dataset"] for r in pts}):
        sub = [r for r in pts if r["dataset"] == ds]
        ax.errorbar([r["text_hca"] for r in sub], [r["hca"] for r in sub], xerr=_err(sub, "text_hca"),
                    yerr=_err(sub, "hca"), fmt="o", capsize=2, label=ds)
        for r in sub:
            ax.annotate(r["model"], (r["text_hca"], r["hca"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    xs = [r["text_hca"] for r in pts]
    ys = [r["hca"] for r in pts]
    if len(pts) >= 2 and max(xs) > min(xs):
        import numpy as np

        slope, intercept = np.polyfit(xs, ys, 1)
        grid = np.linspace(min(xs), max(xs), 20)
        ax.plot(grid, slope * grid + intercept, "k--", linewidth=1, label=f"fit: y={slope:.2f}x+{intercept:.1f}")
    # Percent axes from 0, so a flat line at 0 (no visual HCA) reads as such, not as noise.
    top_x = max([*xs, *((r.get("text_hca_ci") or [0, 0])[1] for r in pts)])
    top_y = max([*ys, *((r.get("hca_ci") or [0, 0])[1] for r in pts)])
    ax.set_xlim(0, max(5.0, 1.15 * top_x))
    ax.set_ylim(0, max(5.0, 1.15 * top_y))
    ax.set_xlabel("text HCA (%)")
    ax.set_ylabel("visual HCA (%)")
    ax.set_title(f"Text vs visual HCA (n={len(pts)} models; bars: 95% intervals)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out, "text_vs_visual_hca.png")


def probe_curves(rows: list[dict], out: Path) -> dict[str, str]:
    """Probe accuracy per level and probe HCA against site/layer, one figure per probe run."""
    images: dict[str, str] = {}
    for run in sorted({r["run"] for r in rows}):
        sub = [r for r in rows if r["run"] == run]
        sites = [r["site"] for r in sub]
        fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(sites) + 3), 3.8))
        for name in sub[0]["levels"]:
            ax.plot(range(len(sites)), [r["levels"].get(name) for r in sub], marker=".", label=name)
        ax.plot(range(len(sites)), [r["hca"] for r in sub], "k-", linewidth=2, label="probe HCA")
        ax.set_xticks(range(len(sites)), sites, rotation=60, fontsize=7)
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 105)
        ax.set_title(f"Linear probes: {run} ({sub[0]['side']})")
        ax.legend(fontsize=7, ncol=2)
        images[f"probe_{run}"] = _save(fig, out, f"probes_{run}.png")
    return images


def _run_label(r: dict) -> str:
    return f"{r['model']} · {r['dataset']} · {r['mode']}"


def severity_histogram(rows: list[dict], out: Path) -> str | None:
    """Mistake severity: per run, the share of its wrong picks (that are taxonomy nodes) at each LCA
    depth, as grouped bars (left = wrong from the first level on, right = wrong only at the leaf)."""
    rows = [r for r in rows if r.get("severity")]
    if not rows:
        return None
    depth = max(len(r["severity"]) for r in rows)
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * depth + 3), 3.8))
    for k, r in enumerate(rows):
        xs = [d + (k - (len(rows) - 1) / 2) * width for d in range(len(r["severity"]))]
        ax.bar(xs, [v or 0.0 for v in r["severity"]], width, label=f"{_run_label(r)} (n={r['mistakes_placed']})")
    ax.set_xticks(range(depth), [str(d) for d in range(depth)])
    ax.set_xlabel("LCA depth of the wrong pick (levels shared with the truth)")
    ax.set_ylabel("share of wrong picks (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Mistake severity")
    ax.legend(fontsize=7)
    return _save(fig, out, "mistake_severity.png")


def precision_recall(rows: list[dict], out: Path) -> str | None:
    """hP against hR per run, with bootstrap intervals; the dotted diagonal is hP = hR."""
    rows = [r for r in rows if r.get("hierarchical_precision") is not None and r.get("hierarchical_recall") is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    for r in rows:
        ax.errorbar([r["hierarchical_recall"]], [r["hierarchical_precision"]], xerr=_err([r], "hierarchical_recall"),
                    yerr=_err([r], "hierarchical_precision"), fmt="o", capsize=2, label=_run_label(r))
    ax.plot([0, 100], [0, 100], ":", color="gray", linewidth=1)
    ax.set_xlim(0, 105)
    ax.set_ylim(0, 105)
    ax.set_xlabel("hierarchical recall (%)")
    ax.set_ylabel("hierarchical precision (%)")
    ax.set_title("Hierarchical precision vs recall", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out, "hierarchical_precision_recall.png")


def path_consistency(rows: list[dict], out: Path) -> str | None:
    """Path consistency of the picks per run (bars, bootstrap error bars); runs without a taxonomy
    are left out (the report lists them)."""
    rows = [r for r in rows if r.get("path_consistency") is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(rows) + 2), 3.6))
    ax.bar(range(len(rows)), [r["path_consistency"] for r in rows], color="#31a354", yerr=_err(rows, "path_consistency"), capsize=3)
    ax.set_xticks(range(len(rows)), [_run_label(r).replace(" · ", "\n") for r in rows], fontsize=7)
    ax.set_ylabel("images whose picks form a path (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Path consistency of the picks")
    return _save(fig, out, "path_consistency.png")


def conditional_accuracy(rows: list[dict], out: Path) -> str | None:
    """Accuracy of each level given the level above right, one line per run, bootstrap error bars."""
    rows = [r for r in rows if r["levels"]]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    longest = max(rows, key=lambda r: len(r["levels"]))
    names = list(longest["levels"])
    for r in rows:
        cis = r.get("levels_ci") or {}
        xs = [i for i, n in enumerate(names) if n in r["levels"]]
        ys = [r["levels"][names[i]] for i in xs]
        err = [[max(0.0, y - cis[names[i]][0]) if names[i] in cis else 0.0 for i, y in zip(xs, ys)],
               [max(0.0, cis[names[i]][1] - y) if names[i] in cis else 0.0 for i, y in zip(xs, ys)]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=_run_label(r))
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_ylabel("accuracy given parent right (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Conditional accuracy (level 2 → leaf)")
    ax.legend(fontsize=7)
    return _save(fig, out, "conditional_accuracy.png")


def draw_all(tables: dict[str, list[dict]], out: Path) -> dict[str, str]:
    """Draw every figure a report's tables (`Report.tables`) support; returns {figure key: file name}.

    Takes the plain tables, not the `Report`, so this module never imports the one that calls it.
    """
    t = tables
    images = {
        "hca_vs_leaf": hca_vs_leaf(t["visual"], out),
        "per_level": per_level(t["per_level"], out),
        "scatter": scatter(t["visual"], out),
        "severity": severity_histogram(t.get("severity", []), out),
        "hierarchical_pr": precision_recall(t.get("severity", []), out),
        "path_consistency": path_consistency(t.get("severity", []), out),
        "conditional": conditional_accuracy(t.get("conditional", []), out),
    }
    images.update(probe_curves(t.get("probes", []), out))
    return {k: v for k, v in images.items() if v}
