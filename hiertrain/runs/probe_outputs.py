"""Probe results as files: ``probes.json`` + ``run.json``, accuracy/HCA-vs-layer plots, a summary.

Kept apart from `LinearProbes` so reports can be rebuilt from ``probes.json`` alone and the
module stays about training. Chance levels are stated next to every figure: per level the
uniform guess ``1/classes``; for HCA the product over levels of independent uniform guesses.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hiertrain.base.atomic import atomic_path, write_atomic
from hiertrain.features.probe_spec import ProbeSpec
from hiertrain.runs.meta import RunMeta, dataset_name, write_run_json

PROBES_JSON = "probes.json"


def probe_report(spec: ProbeSpec, results: dict[str, dict], hparams: dict[str, Any]) -> dict[str, Any]:
    """The probes.json object (schema in docs/ARCHITECTURE.md) plus per-level details."""
    levels = []
    for i, name in enumerate(spec.level_names):
        probed = i in spec.probed_levels
        n = len(spec.classes[i])
        unseen = spec.unseen_test_classes[i] if spec.unseen_test_classes else []
        levels.append(
            {
                "level": i + 1,
                "name": name,
                "probed": probed,
                "classes": n,
                "chance": (1.0 / n) if probed and n else None,
                "unseen_test_classes": len(unseen),
                "unseen_test_class_names": unseen,
            }
        )
    chance = [lv["chance"] for lv in levels]
    return {
        "side": "visual" if spec.info.get("mode", "image") == "image" else "text",
        "sites": list(spec.sites),
        "level_names": list(spec.level_names),
        "pooling": spec.info.get("pool"),
        "test": results.get("test"),
        "val": results.get("val"),
        "chance": {"accuracy": chance, "hca": math.prod(c for c in chance if c is not None)},
        "unseen_test_classes": {lv["name"]: lv["unseen_test_classes"] for lv in levels if lv["probed"]},
        "num_train": spec.split_sizes.get("train"),
        "num_val": spec.split_sizes.get("val"),
        "num_test": spec.split_sizes.get("test"),
        "levels": levels,
        "selection": spec.info.get("selection", "val"),
        "trained_on": spec.info.get("trained_on"),
        "probe": {k: v for k, v in hparams.items() if k != "output_dir"},
        "info": dict(spec.info),
    }


def run_meta(report: dict[str, Any], seed: int) -> dict[str, Any]:
    """run.json for `hiertrain report` (kind "probe"; question-file fields do not apply)."""
    info = report["info"]
    source = info.get("source") or info.get("train_taxonomy") or info.get("store", "")
    meta = RunMeta(
        kind="probe",
        model=str(info.get("model", "")),
        dataset=dataset_name(source=source),
        mode="image" if report["side"] == "visual" else "text",
        answer="probe",
        seed=seed,
        num_samples=report["num_test"],
        fields={
            "sites": report["sites"], "pooling": report["pooling"], "side": report["side"], "store": info.get("store"),
            "selection": report.get("selection", "val"), "paper_inat_level_bug": bool(info.get("paper_inat_level_bug")),
            "trained_on": report.get("trained_on"), "train_order": info.get("train_order"),
            "probe": report.get("probe"),
        },  # fmt: skip
    )
    return meta.to_json()


def summary_lines(report: dict[str, Any], split: str = "test") -> list[str]:
    """A fixed-width table: one row per site, per-level accuracy then HCA; chance in the header."""
    res = report.get(split)
    if res is None:
        return [f"no {split} results"]
    probed = [lv for lv in report["levels"] if lv["probed"]]
    head = f"{'site':<12}" + "".join(f"{lv['name'][:10]:>11}" for lv in probed) + f"{'HCA':>8}"
    chance = f"{'(chance)':<12}" + "".join(f"{lv['chance']:>11.3f}" for lv in probed) + f"{report['chance']['hca']:>8.4f}"
    lines = [f"probe {split} accuracy (n={report.get('num_' + split, '?')}); model selection: {report.get('selection', 'val')}"]
    if info_bug := (report.get("info") or {}).get("paper_inat_level_bug"):
        moved = {k: v for k, v in (report.get("trained_on") or {}).items() if k != v}
        lines.append(f"paper_inat_level_bug={info_bug}: levels trained on other ranks' labels: {moved}")
    lines += [head, chance]
    for site in report["sites"]:
        accs = [res["accuracy"][site][lv["level"] - 1] for lv in probed]
        cells = "".join(f"{a:>11.3f}" if a is not None else f"{'-':>11}" for a in accs)
        hca = res["hca"][site]
        lines.append(f"{site:<12}{cells}{hca:>8.3f}" if hca is not None else f"{site:<12}{cells}{'-':>8}")
    for lv in probed:
        if lv["unseen_test_classes"]:
            lines.append(
                f"note: level {lv['name']}: {lv['unseen_test_classes']} test classes never seen in train "
                "(counted as classes; their samples can only be right by chance)"
            )
    return lines


def plot_probes(report: dict[str, Any], out_dir: Path, split: str = "test") -> list[Path]:
    """accuracy_vs_layer.png (one line per level) and hca_vs_layer.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = report[split]
    sites = report["sites"]
    xs = range(len(sites))
    paths = []
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(sites) + 3), 4))
    for lv in report["levels"]:
        if not lv["probed"]:
            continue
        ys = [res["accuracy"][s][lv["level"] - 1] for s in sites]
        ax.plot(xs, [math.nan if y is None else y for y in ys], marker="o", label=f"{lv['name']} ({lv['classes']} cl.)")
    _axes(ax, sites, f"probe accuracy per level ({split})", "accuracy")
    paths.append(out_dir / "accuracy_vs_layer.png")
    with atomic_path(paths[-1]) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(sites) + 3), 4))
    ax.plot(xs, [math.nan if res["hca"][s] is None else res["hca"][s] for s in sites], marker="o", label="probe HCA")
    ax.axhline(report["chance"]["hca"], color="gray", linestyle=":", label="chance")
    _axes(ax, sites, f"probe hierarchical consistent accuracy ({split})", "HCA")
    paths.append(out_dir / "hca_vs_layer.png")
    with atomic_path(paths[-1]) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    return paths


def _axes(ax, sites: list[str], title: str, ylabel: str) -> None:
    ax.set_xticks(range(len(sites)))
    ax.set_xticklabels(sites, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def write_probe_outputs(report: dict[str, Any], out_dir: Path, loggers: list | None = None, seed: int = 0) -> Path:
    """Write probes.json, run.json and plots into `out_dir`, print the summary, log plots to W&B."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PROBES_JSON
    write_atomic(path, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    write_run_json(out_dir, run_meta(report, seed))
    plots = plot_probes(report, out_dir)
    print("\n".join(summary_lines(report)))
    for logger in loggers or []:
        if type(logger).__name__ == "WandbLogger":
            logger.log_image(key="probes", images=[str(p) for p in plots], caption=[p.stem for p in plots])
    return path


def load_probes(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))
