"""Compare finished runs: tables in the paper's layout, text-vs-visual HCA correlation, plots.

Input is run directories (or folders holding them) as written by evaluation, probing and LoRA
runs: each has a `run.json` (see docs/ARCHITECTURE.md). Output is `report.md` with embedded
PNGs, and `report.json` with every number the tables show.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hiertrain.base.atomic import write_atomic
from hiertrain.protocol.conditions import REGISTRY
from hiertrain.base.errors import HierError
from hiertrain.protocol.prompts import leaf_label
from hiertrain.metrics.metric_labels import percent
from hiertrain.runs.meta import RUN_JSON, model_name
from hiertrain.protocol.protocol import QuestionProtocol
from hiertrain.runs.schema import MetricsJson, RunJson

CHECKPOINT_DIRNAME = "checkpoints"  # where hiertrain points ModelCheckpoint (hiertrain.cli.lightning)


@dataclass
class Run:
    """One run directory and what it wrote (run.json and metrics.json through their models,
    hiertrain.runs.schema)."""

    path: Path
    info: RunJson
    metrics: MetricsJson | None = None
    probes: dict[str, Any] | None = None
    before_after: dict[str, Any] | None = None

    @property
    def meta(self) -> dict[str, Any]:
        """run.json as written (every key, unknown ones too)."""
        return self.info.data

    @property
    def kind(self) -> str:
        return str(self.info.kind)

    @property
    def unfinished(self) -> str | None:
        """Why this run has no row (its result file is missing), or None for a finished run."""
        name = RESULT_FILES.get(self.kind)
        if name is None or getattr(self, RESULT_ATTRS[name]) is not None:
            return None
        streamed = 0
        if self.kind == "eval":  # what a killed evaluation left for its resume
            streamed = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in self.path.glob("predictions*.jsonl"))
        done = f"; {streamed} prediction lines streamed" if streamed else ""
        return f"{self.name}: unfinished (no {name}{done}); rerun its command to finish it"

    @property
    def name(self) -> str:
        """The run's name: run.json's `run_name`; else its folder, but for Lightning's checkpoint
        folder (a LoRA run.json sits beside its adapter there) the run root's folder."""
        if self.info.run_name:
            return str(self.info.run_name)
        return self.path.parent.name if self.path.name == CHECKPOINT_DIRNAME else self.path.name

    @property
    def model(self) -> str:
        return str(self.info.model_name or model_name(str(self.meta.get("model", "?"))))

    @property
    def dataset(self) -> str:
        return str(self.meta.get("dataset", "?"))

    @property
    def mode(self) -> str:
        return str(self.info.mode)

    @property
    def protocol(self) -> QuestionProtocol | None:
        """The run's question protocol (`RunJson.protocol`; None for a probe run)."""
        return self.info.protocol

    @property
    def condition(self) -> str:
        """The question condition (hiertrain.protocol.conditions); runs from before the field: "plain"."""
        return self.protocol.condition if self.protocol is not None else "plain"

    @property
    def open_set(self) -> bool:
        """Whether the report scores this run in its open-set section (`Condition.open_set`), apart
        from the closed-set tables; a condition this version does not know counts as closed."""
        known = REGISTRY.get(self.condition)
        return bool(known and known.open_set)


@dataclass
class Report:
    """Everything the report shows, as data (written to report.json)."""

    runs: list[Run]
    differences: list[str] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    correlation: list[dict[str, Any]] = field(default_factory=list)


# The file a finished run of each kind has; a run without it is listed as unfinished.
RESULT_FILES = {"eval": "metrics.json", "probe": "probes.json", "lora": "before_after.json"}
RESULT_ATTRS = {"metrics.json": "metrics", "probes.json": "probes", "before_after.json": "before_after"}
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise HierError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None


def collect_runs(paths: list[str | Path]) -> list[Run]:
    """Find every run directory (a folder with run.json) at or below the given paths."""
    runs: list[Run] = []
    seen: set[Path] = set()
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise HierError(f"{root}: no such run directory")
        found = [root / RUN_JSON] if (root / RUN_JSON).is_file() else sorted(root.rglob(RUN_JSON))
        for meta_path in found:
            run_dir = meta_path.parent.resolve()
            if run_dir in seen:
                continue
            seen.add(run_dir)
            run = Run(run_dir, RunJson.read(meta_path))
            for name, attr in RESULT_ATTRS.items():
                if (run_dir / name).is_file():
                    read = MetricsJson.read if name == "metrics.json" else _read_json
                    setattr(run, attr, read(run_dir / name))
            runs.append(run)
    if not runs:
        raise HierError(f"no run.json found under {', '.join(str(p) for p in paths)}")
    return runs


def protocol_differences(runs: list[Run]) -> list[str]:
    """Say which evaluation runs were scored under a different protocol than the first of their kind.

    Runs on one dataset must share the question file and split; VLLM runs must share the prompt variant,
    the answer mode, the backend and the question condition (CLIP runs answer by similarity, so only
    their question file counts). Open-set runs are compared among themselves: they are shown beside
    the closed-set runs in their own table, not mixed into the closed-set tables.
    """
    evals = [r for r in runs if r.kind == "eval"]
    out: list[str] = []
    by_dataset: dict[str, Run] = {}
    for run in evals:
        ref = by_dataset.setdefault(run.dataset, run)
        if run.info.questions_sha256 != ref.info.questions_sha256:
            out.append(
                f"{run.name} and {ref.name} ({run.dataset}) use different question files: "
                f"{run.info.questions} vs {ref.info.questions}"
            )
        elif run.info.split != ref.info.split:
            out.append(
                f"{run.name} and {ref.name} ({run.dataset}) score different splits: "
                f"{run.info.split!r} vs {ref.info.split!r}"
            )
    answering = [r for r in evals if r.info.answer != "clip"]
    for vllm in ([r for r in answering if not r.open_set], [r for r in answering if r.open_set]):
        out += _setting_differences(vllm)
    return out


def _setting_differences(vllm: list[Run]) -> list[str]:
    out: list[str] = []
    for key in ("prompt_variant", "answer", "answer_parser", "condition", "inference", "circular"):
        if vllm:
            ref = vllm[0]
            for run in vllm[1:]:
                if _setting(run, key) != _setting(ref, key):
                    out.append(
                        f"{run.name} and {ref.name} differ in {key}: "
                        f"{_setting(run, key)!r} vs {_setting(ref, key)!r}"
                    )
    if vllm:  # served (vLLM, SGLang, an API) and in-process transformers runs of one model can drift apart
        ref = vllm[0]
        for run in vllm[1:]:
            if run_backend(run) != run_backend(ref):
                out.append(
                    f"{run.name} and {ref.name} differ in backend: {run_backend(run)!r} vs {run_backend(ref)!r}"
                )
    return out


def _setting(run: Run, key: str) -> Any:
    """A protocol setting of a run; generate runs written before `answer_parser` existed used "strict"."""
    if key == "answer_parser" and run.info.answer == "generate":
        return run.info.answer_parser or "strict"
    if key == "condition":
        return run.condition
    # prompt_variant, answer, answer_parser, inference, circular: the model's defaults are what
    # runs from before a field meant (independent, not circular)
    return getattr(run.info, key)


def run_backend(run: Run) -> str:
    """How the run's model was run: "transformers" (in process; runs from before the field) or "served"."""
    return str(run.info.backend or "transformers")


def _ci(metrics: MetricsJson | None, key: str) -> list[float] | None:
    """A metric's bootstrap interval from metrics.json (`intervals`), in percent; None if absent."""
    bounds = metrics.interval(key) if metrics else None
    return None if not bounds else [percent(bounds[0]), percent(bounds[1])]


def _level_cis(metrics: MetricsJson, names: list[str]) -> dict[str, list[float]]:
    bounds = metrics.interval("per_level_accuracy") or []
    return {n: [percent(b[0]), percent(b[1])] for n, b in zip(names, bounds) if b}


def _chance(metrics: MetricsJson | None, key: str) -> Any:
    return metrics.chance_of(key) if metrics else None


def _eval_tables(runs: list[Run]) -> dict[str, list[dict[str, Any]]]:
    evals = [r for r in runs if r.kind == "eval" and r.metrics and not r.open_set]
    text = {(r.model, r.dataset): r for r in evals if r.mode == "text"}
    visual_rows, level_rows, overlap_rows = [], [], []
    for run in sorted(evals, key=lambda r: (r.dataset, r.model, r.mode)):
        m = run.metrics or MetricsJson.empty()
        if run.mode == "image":
            twin = text.get((run.model, run.dataset))
            visual_rows.append(
                {
                    "model": run.model,
                    "dataset": run.dataset,
                    "hca": percent(m.hca),
                    "leaf_accuracy": percent(m.leaf_accuracy),
                    "text_hca": percent(twin.metrics.hca) if twin else None,
                    "samples": m.num_samples,
                    "skipped": run.info.skipped,
                    "hca_ci": _ci(m, "hca"),
                    "leaf_accuracy_ci": _ci(m, "leaf_accuracy"),
                    "text_hca_ci": _ci(twin.metrics, "hca") if twin else None,
                    "chance_hca": percent(_chance(m, "hca")),
                    "text_chance_hca": percent(_chance(twin.metrics, "hca")) if twin else None,
                }
            )
        names = m.level_names or [f"level{i + 1}" for i in range(len((m.per_level_accuracy or [])))]
        level_rows.append(
            {
                "model": run.model,
                "dataset": run.dataset,
                "mode": run.mode,
                "levels": {n: percent(a) for n, a in zip(names, (m.per_level_accuracy or [])) if a is not None and not _isnan(a)},
                "levels_ci": _level_cis(m, names),
                "chance_levels": {n: percent(c) for n, c in zip(names, _chance(m, "per_level_accuracy") or []) if c is not None},
                "hca": percent(m.hca),
                "hca_ci": _ci(m, "hca"),
                "chance_hca": percent(_chance(m, "hca")),
            }
        )
        overlap_rows.append(
            {
                "model": run.model,
                "dataset": run.dataset,
                "mode": run.mode,
                "point_overlap": percent(m.point_overlap),
                "strict_point_overlap": percent(m.strict_point_overlap),
                "top_overlap": percent(m.top_overlap),
                "hierarchical_f1": percent(m.hierarchical_f1),
                "unparseable_rate": percent(m.unparseable_rate),
                **{f"{k}_ci": _ci(m, k) for k in ("point_overlap", "strict_point_overlap", "top_overlap")},
            }
        )
    return {
        "visual": visual_rows,
        "per_level": level_rows,
        "overlap": overlap_rows,
        "open_set": _open_set_rows(runs, evals),
        **_severity_tables(sorted(evals, key=lambda r: (r.dataset, r.model, r.mode))),
    }


def _measure(x: Any) -> float | None:
    """A non-fraction measure (mean LCA depth, tree distance) rounded for the tables."""
    return None if x is None else round(float(x), 3)


def _measure_ci(metrics: MetricsJson, key: str) -> list[float] | None:
    bounds = metrics.interval(key)
    return None if not bounds else [_measure(bounds[0]), _measure(bounds[1])]


def _severity_tables(evals: list[Run]) -> dict[str, list[dict[str, Any]]]:
    """hP / hR, path consistency and mistake severity per run (the taxonomy measures: only runs
    with a taxonomy; the others are listed with the reason), and per-level conditional accuracy."""
    severity, conditional = [], []
    for run in evals:
        m = run.metrics or MetricsJson.empty()
        names = m.level_names or [f"level{i + 1}" for i in range(len(m.per_level_accuracy or []))]
        placed = m.placed
        counts = m.mistake_severity or []
        total = sum(counts)
        severity.append(
            {
                "run": run.name,
                "model": run.model,
                "dataset": run.dataset,
                "mode": run.mode,
                "hierarchical_precision": percent(m.hierarchical_precision),
                "hierarchical_recall": percent(m.hierarchical_recall),
                "hierarchical_f1": percent(m.hierarchical_f1),
                "path_consistency": percent(m.path_consistency),
                "mistake_lca_depth": _measure(m.mistake_lca_depth),
                "mistake_distance": _measure(m.mistake_distance),
                "mistakes_placed": total if placed else None,
                "mistakes_unplaced": m.mistakes_unplaced,
                # share of the placed wrong picks at each LCA depth (%), the severity histogram
                "severity": [percent(c / total) for c in counts] if total else [],
                "taxonomy": m.taxonomy if placed else None,
                "note": None if placed else (m.taxonomy_note or "no taxonomy measures in metrics.json (older run)"),
                **{f"{k}_ci": _ci(m, k) for k in ("hierarchical_precision", "hierarchical_recall", "path_consistency")},
                **{f"{k}_ci": _measure_ci(m, k) for k in ("mistake_lca_depth", "mistake_distance")},
            }
        )
        values = m.conditional_accuracy or []
        bounds = m.interval("conditional_accuracy") or []
        conditional.append(
            {
                "model": run.model,
                "dataset": run.dataset,
                "mode": run.mode,
                "levels": {n: percent(v) for n, v in list(zip(names, values))[1:] if v is not None},
                "levels_ci": {n: [percent(b[0]), percent(b[1])] for n, b in list(zip(names, bounds))[1:] if b},
            }
        )
    return {"severity": severity, "conditional": [r for r in conditional if r["levels"]]}


def _open_set_rows(runs: list[Run], closed: list[Run]) -> list[dict[str, Any]]:
    """Each open-set run beside the closed-set run of the same model, dataset and mode (if any)."""
    twins = {(r.model, r.dataset, r.mode): r for r in closed}
    rows = []
    for run in sorted((r for r in runs if r.kind == "eval" and r.metrics and r.open_set), key=lambda r: (r.dataset, r.model, r.mode)):
        m, twin = run.metrics or MetricsJson.empty(), twins.get((run.model, run.dataset, run.mode))
        c = twin.metrics if twin and twin.metrics else MetricsJson.empty()
        rates = m.open_set or {}
        rows.append(
            {
                "model": run.model,
                "dataset": run.dataset,
                "mode": run.mode,
                "closed_hca": percent(c.hca),
                "open_hca": percent(m.hca),
                "closed_leaf": percent(c.leaf_accuracy),
                "open_leaf": percent(m.leaf_accuracy),
                "open_named_other_level": percent(rates.get("other_level_rate")),
                "open_named_none": percent(rates.get("none_rate")),
                "open_ambiguous": percent(rates.get("ambiguous_rate")),
                "open_hca_ci": _ci(m, "hca"),
                "closed_hca_ci": _ci(c, "hca"),
                "closed_run": twin.name if twin else None,
                "open_run": run.name,
            }
        )
    return rows


def _isnan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _probe_tables(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        if not run.probes:
            continue
        p = run.probes
        test = p.get("test", {})
        for site in p.get("sites", []):
            rows.append(
                {
                    "run": run.name,
                    "model": run.model,
                    "dataset": run.dataset,
                    "side": p.get("side", run.meta.get("side", "visual")),
                    "site": site,
                    # "test" = the paper's optimistic protocol (probes chosen on test): never mix it up with held-out figures
                    "selection": "test (optimistic)" if str(p.get("selection", "val")).startswith("test") else "val",
                    "levels": {n: percent(a) for n, a in zip(p.get("level_names", []), test.get("accuracy", {}).get(site, []))},
                    "hca": percent(test.get("hca", {}).get(site)),
                }
            )
    return rows


def _lora_tables(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        for row in (run.before_after or {}).get("rows", []):
            before, after = row.get("before", {}), row.get("after", {})
            rows.append(
                {
                    "run": run.name,
                    "dataset": row.get("dataset"),
                    "mode": row.get("mode"),
                    "hca_before": percent(before.get("hca")),
                    "hca_after": percent(after.get("hca")),
                    "hca_delta": percent(None if before.get("hca") is None or after.get("hca") is None else after["hca"] - before["hca"]),
                    "last_level": leaf_label(str(row.get("mode", "image"))),  # text rows: the leaf is not asked
                    "last_level_before": percent(before.get("leaf_accuracy")),
                    "last_level_after": percent(after.get("leaf_accuracy")),
                    **_paired_cells(row.get("paired")),
                }
            )
    return rows


def _paired_cells(paired: dict[str, Any] | None) -> dict[str, Any]:
    """The delta's paired bootstrap interval (points) and McNemar p of a before/after row."""
    out: dict[str, Any] = {}
    metrics = (paired or {}).get("metrics") or {}
    for name, short in (("hca", "hca"), ("leaf_accuracy", "last_level")):
        entry = metrics.get(name) or {}
        interval = entry.get("interval")
        if name == "leaf_accuracy":
            out["last_level_delta"] = percent(entry.get("difference")) if entry else None
        out[f"{short}_delta_ci"] = None if not interval else [percent(interval[0]), percent(interval[1])]
        out[f"{short}_mcnemar_p"] = (entry.get("mcnemar") or {}).get("p")
    return out


def correlations(visual_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pearson and Spearman of text HCA vs visual HCA across models, per dataset and pooled.

    With at least `MIN_MODELS` models also Pearson's bootstrap interval over models and the
    permutation p-value (hiertrain.metrics.correlation); with fewer, `too_few` says so.
    """
    import torch

    from hiertrain.metrics.correlation import correlation_test, pearson_columns, spearman

    points = [r for r in visual_rows if r["hca"] is not None and r["text_hca"] is not None]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in points:
        groups.setdefault(r["dataset"], []).append(r)
    if len(groups) > 1:
        groups["pooled"] = points
    out = []
    for name, rows in groups.items():
        entry: dict[str, Any] = {"dataset": name, "n": len(rows), "pearson": None, "spearman": None}
        if len(rows) >= 3:
            text = torch.tensor([r["text_hca"] for r in rows], dtype=torch.float64)
            vis = torch.tensor([r["hca"] for r in rows], dtype=torch.float64)
            if text.std() > 0 and vis.std() > 0:
                entry["pearson"] = round(float(pearson_columns(text[:, None], vis[:, None])[0]), 4)
                entry["spearman"] = round(spearman(text, vis), 4)
        entry.update(correlation_test([r["text_hca"] for r in rows], [r["hca"] for r in rows]))
        out.append(entry)
    return out


def build_report(runs: list[Run], allow_mixed: bool = False) -> Report:
    """Tables and correlations; raises HierError on mixed protocols unless allowed."""
    report = Report(runs=runs, differences=protocol_differences(runs))
    if report.differences and not allow_mixed:
        raise HierError(
            "runs use mixed protocols (pass --allow-mixed to compare anyway): " + "; ".join(report.differences)
        )
    report.tables = _eval_tables(runs)
    report.tables["probes"] = _probe_tables(runs)
    report.tables["lora"] = _lora_tables(runs)
    report.correlation = correlations(report.tables["visual"])
    return report


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.2f}"
    return str(x)


def _cell(row: dict[str, Any], column: str) -> str:
    """`value [low, high]` when the row holds the column's interval (`<column>_ci`), else the value."""
    text = _fmt(row.get(column))
    bounds = row.get(f"{column}_ci")
    if bounds and row.get(column) is not None:
        text += f" [{_fmt(bounds[0])}, {_fmt(bounds[1])}]"
    return text


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A GitHub Markdown table; nested `levels` dicts are flattened by the caller. A cell whose
    row has `<column>_ci` = [low, high] shows `value [low, high]`."""
    head = "| " + " | ".join(columns) + " |"
    sep = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(_cell(row, c) for c in columns) + " |" for row in rows]
    return "\n".join([head, sep, *body])


def correlation_table(rows: list[dict[str, Any]]) -> str:
    """Pearson with its bootstrap interval over models and permutation p, Spearman, n; a group
    with fewer than MIN_MODELS models is stated as too few instead of numbers."""
    from hiertrain.metrics.correlation import MIN_MODELS

    shown = []
    for row in rows:
        if row.get("too_few"):
            note = f"too few models (n={row['n']} < {MIN_MODELS})"
            shown.append({**row, "pearson": note, "pearson_ci": None, "spearman": "–", "p_value": "–"})
        else:
            shown.append({**row, "pearson_ci": row.get("pearson_interval")})
    return markdown_table(shown, ["dataset", "n", "pearson", "p_value", "spearman"])


def _flatten_levels(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    level_cols: list[str] = []
    for row in rows:
        for name in row["levels"]:
            if name not in level_cols:
                level_cols.append(name)
    flat = [
        {
            **{k: v for k, v in row.items() if k not in ("levels", "levels_ci")},
            **row["levels"],
            **{f"{name}_ci": bounds for name, bounds in (row.get("levels_ci") or {}).items()},
        }
        for row in rows
    ]
    return flat, level_cols


SEVERITY_NOTE = (
    "hP / hR: micro hierarchical precision / recall over the asked levels (hF1 = 2 hP hR / (hP + hR)). "
    "Path consistency: share of images (2+ asked levels) whose picked nodes form a path of the taxonomy, "
    "right or wrong. Mistake LCA depth: levels a wrong pick's path shares with the truth's from the root; "
    "distance: edges between the wrong pick and the true node (2 x (level - LCA depth)); means over the wrong "
    "picks that are taxonomy nodes; unplaced = wrong picks that are not (unparseable, not a node), counted apart."
)


def _severity_markdown(t: dict[str, list[dict[str, Any]]], images: dict[str, str]) -> list[str]:
    """The severity / consistency section: one table, the conditional-accuracy table, their plots."""
    rows = t.get("severity") or []
    if not rows:
        return []
    md = [
        "## Hierarchical precision / recall, path consistency, mistake severity",
        "",
        markdown_table(rows, ["model", "dataset", "mode", "hierarchical_precision", "hierarchical_recall", "path_consistency",
                              "mistake_lca_depth", "mistake_distance", "mistakes_placed", "mistakes_unplaced"]),
        "",
        SEVERITY_NOTE,
        "",
    ]
    missing = [r for r in rows if r["note"]]
    if missing:
        md += ["Runs without the taxonomy measures (no taxonomy: nothing guessed):",
               *[f"- {r['run']}: {r['note']}" for r in missing], ""]
    placed = [r for r in rows if r["severity"]]
    if placed:
        depth = max(len(r["severity"]) for r in placed)
        hist = [{**{k: r[k] for k in ("model", "dataset", "mode")}, **{f"LCA {d}": (r["severity"] + [None] * depth)[d] for d in range(depth)}}
                for r in placed]  # fmt: skip
        md += ["Mistake severity: share of the placed wrong picks (%) by LCA depth (0 = they meet above level 1)", "",
               markdown_table(hist, ["model", "dataset", "mode", *[f"LCA {d}" for d in range(depth)]]), ""]
    for key, title in (("severity", "Mistake severity"), ("hierarchical_pr", "hP vs hR"), ("path_consistency", "Path consistency")):
        if key in images:
            md += [f"![{title}]({images[key]})", ""]
    if t.get("conditional"):
        flat, level_cols = _flatten_levels(t["conditional"])
        md += ["## Conditional accuracy (%): level right given the level above right", "",
               markdown_table(flat, ["model", "dataset", "mode", *level_cols]), ""]
        if "conditional" in images:
            md += [f"![Conditional accuracy]({images['conditional']})", ""]
    return md


INTERVALS_NOTE = (
    "`value [low, high]`: 95% percentile bootstrap interval over images (metrics.json `intervals`); "
    "chance = uniform guessing among the shown options (per level 1/#options; HCA the product over a "
    "sample's asked levels, averaged over samples)."
)
# run.json keys left out of report.json: what differs between two runs of the same study, and
# the file layout's version (hiertrain.runs.schema), so a study's report.json bytes do not depend on it
VOLATILE_META = ("created", "schema_version")


def unfinished_runs(report: Report) -> list[str]:
    """One line per run directory without its result file (killed, failed or still running)."""
    return sorted(u for u in (r.unfinished for r in report.runs) if u)


def headline_table(report: Report) -> str:
    """The table `make demo` prints: visual HCA, leaf accuracy and text HCA per model x dataset."""
    return markdown_table(report.tables["visual"], ["model", "dataset", "hca", "leaf_accuracy", "text_hca", "chance_hca", "samples", "skipped"])


def write_report(report: Report, out: str | Path, title: str = "hiertrain report", gallery: int = 6) -> Path:
    """Write report.md, report.json and the PNG plots into `out`; return report.md's path.
    `gallery`: images per category in each image run's failure gallery (0 = no gallery)."""
    from hiertrain.report import gallery as report_gallery
    from hiertrain.report import plots as report_plots
    from hiertrain.report import wandb_runs

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = report_plots.draw_all(report.tables, out)
    galleries = [] if gallery <= 0 else [
        e for r in sorted(report.runs, key=lambda r: r.name)
        if (e := report_gallery.draw_run(r.path, r.meta, r.name, out, per_category=gallery)) is not None
    ]
    t = report.tables
    md = [f"# {title}", "", f"{len(report.runs)} runs: " + ", ".join(sorted(r.name for r in report.runs)), ""]
    unfinished = unfinished_runs(report)
    if unfinished:
        md += ["**Unfinished runs (listed above, no row below):**", *[f"- {u}" for u in unfinished], ""]
    if report.differences:
        md += ["**Mixed protocols (compared on request):**", *[f"- {d}" for d in report.differences], ""]
    md += ["## Visual and text HCA (%)", "", headline_table(report), "", INTERVALS_NOTE, ""]
    if "hca_vs_leaf" in images:
        md += [f"![HCA vs leaf accuracy]({images['hca_vs_leaf']})", ""]
    flat, level_cols = _flatten_levels(t["per_level"])
    md += ["## Per-level accuracy (%)", "", markdown_table(flat, ["model", "dataset", "mode", *level_cols, "hca", "chance_hca"]), ""]
    if "per_level" in images:
        md += [f"![Per-level accuracy]({images['per_level']})", ""]
    md += report_gallery.markdown(galleries)
    if t.get("open_set"):
        md += [
            "## Closed-set vs open-set (%)",
            "",
            markdown_table(t["open_set"], ["model", "dataset", "mode", "closed_hca", "open_hca", "closed_leaf", "open_leaf",
                                           "open_named_other_level", "open_named_none", "open_ambiguous"]),
            "",
            "Open set: each level asked without options (hiertrain's wording, not the paper's), the reply "
            "matched to the taxonomy's nodes of that level; named_other_level / named_none / ambiguous = share of "
            "open replies naming only a node of another level / no node / several nodes of the asked level.",
            "",
        ]
    md += _severity_markdown(t, images)
    md += [
        "## Overlap ratios (%)",
        "",
        markdown_table(t["overlap"], ["model", "dataset", "mode", "point_overlap", "strict_point_overlap", "top_overlap", "hierarchical_f1", "unparseable_rate"]),
        "",
        "## Text vs visual HCA correlation",
        "",
        correlation_table(report.correlation) if report.correlation else "No model has both a visual and a text run.",
        "",
        "n = models with both a visual and a text run. Pearson [95% bootstrap interval over models], "
        "p = two-sided permutation test of no correlation; with fewer than 4 models no correlation is given.",
        "",
    ]
    if "scatter" in images:
        md += [f"![Text vs visual HCA]({images['scatter']})", ""]
    if t["probes"]:
        flat, level_cols = _flatten_levels(t["probes"])
        md += ["## Linear probes on cached features (test split, %)", "", markdown_table(flat, ["run", "side", "site", "selection", *level_cols, "hca"]), ""]
        for key, path in images.items():
            if key.startswith("probe_"):
                md += [f"![{key}]({path})", ""]
    if t["lora"]:
        md += [
            "## LoRA tuning: before / after (%)",
            "",
            markdown_table(t["lora"], ["dataset", "mode", "hca_before", "hca_after", "hca_delta", "hca_mcnemar_p", "last_level",
                                      "last_level_before", "last_level_after", "last_level_delta", "last_level_mcnemar_p"]),
            "",
            "Deltas: after - before in points [95% paired bootstrap interval over images]; "
            "McNemar p: exact two-sided test on the images only one of the two models got right.",
            "",
        ]
    wandb_links = wandb_runs.links(report.runs)
    md += wandb_runs.markdown(wandb_links)
    write_atomic(out / "report.md", "\n".join(md))
    payload = {
        # No creation times: two runs of the same study give the same report.json bytes.
        "runs": [{"path": str(r.path), **{k: v for k, v in r.meta.items() if k not in VOLATILE_META}} for r in report.runs],
        "differences": report.differences,
        "unfinished": unfinished,
        "tables": t,
        "correlation": report.correlation,
        "images": images,
        "gallery": galleries,
        "wandb": wandb_links,
    }
    write_atomic(out / "report.json", json.dumps(payload, indent=2, default=str))
    return out / "report.md"


def log_to_wandb(report: Report, out: Path, project: str = "hiertrain", group: str = "report") -> None:
    """Log the report's tables and plots to one W&B run grouped for comparison."""
    import wandb

    run = wandb.init(project=project, group=group, job_type="report", dir=str(out), reinit="finish_previous")
    try:
        for name, rows in report.tables.items():
            if rows:
                flat = [{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()} for r in rows]
                cols = list(flat[0].keys())
                run.log({f"report/{name}": wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in flat])})
        for png in sorted(out.glob("*.png")):
            run.log({f"report/{png.stem}": wandb.Image(str(png))})
    finally:
        run.finish()
