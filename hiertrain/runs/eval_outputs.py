"""One evaluation run's directory: streamed predictions, resume, and the final outputs.

Layout of `<root>/<run name>/`:
- `run.json`: what was evaluated (model, question file + SHA-256, mode, answer, prompt variant,
  seed, level names); a rerun with other settings into the same directory is refused.
- `predictions.rank<R>.jsonl`: each rank appends a line per finished sample as it finishes.
- `predictions.jsonl`: all finished samples, sorted by id (parts are merged into it at start
  and at the end, so a killed run resumes from whatever was flushed).
- `skipped.jsonl`: samples that could not be evaluated (unreadable image), with the reason.
- `.lock`: held (an OS file lock) by the run writing here; a second run is refused.
- `results.json` (the paper's result format), `metrics.json`, `per_level_accuracy.png`,
  `summary.txt` (the printed table).
Metrics are computed from `predictions.jsonl` only, so an interrupted-and-resumed run writes
the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from hiertrain.base.atomic import atomic_path, write_atomic, write_error
from hiertrain.base.errors import HierError
from hiertrain.protocol.open_set import open_set_metrics
from hiertrain.metrics.circular import circular_metrics
from hiertrain.metrics.metric_labels import MEASURE_LABELS, NO_TAXONOMY, format_measure, format_percent, short_labels
from hiertrain.protocol.prompts import leaf_label
from hiertrain.metrics.predictions import (
    SamplePrediction,
    append_predictions,
    read_predictions,
    write_paper_results,
    write_predictions,
)
from hiertrain.runs.schema import checked_metrics_json
from hiertrain.runs.meta import FRESH_FLAG, RUN_JSON, identity_differences, now, read_run_json, to_json_text, write_run_json

_json = to_json_text
LOCK_FILE = ".lock"
# Every file a run writes into its directory (removed by `RunDirectory.clear`).
OUTPUT_FILES = (
    RUN_JSON, "predictions.jsonl", "skipped.jsonl", "results.json", "metrics.json", "per_level_accuracy.png", "summary.txt",
)  # fmt: skip


class RunDirectory:
    """Streams and merges one run's predictions; rank 0 owns every merged file."""

    def __init__(self, path: str | Path, rank: int = 0) -> None:
        self.path, self.rank = Path(path), rank

    @property
    def predictions_path(self) -> Path:
        return self.path / "predictions.jsonl"

    def part(self, name: str, rank: int | None = None) -> Path:
        return self.path / f"{name}.rank{self.rank if rank is None else rank}.jsonl"

    # ---------------------------------------------------------------- start / resume

    def lock(self) -> None:
        """Hold this directory for this process (an OS lock, freed even by a kill).

        A second run into the same directory gets a one-line refusal naming the holder
        (PID, host) instead of both runs corrupting the predictions file.
        """
        import fcntl
        import os
        import socket

        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK_FILE, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise HierError(
                f"{self.path}: in use by {holder}; wait for that run to end or use another --model.run_name"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} on host {socket.gethostname()}\n")
        handle.flush()
        self._lock = handle

    def unlock(self) -> None:
        """Release `lock` (the lock file stays; an unheld lock file means nothing)."""
        handle = getattr(self, "_lock", None)
        if handle is not None:
            handle.close()
            self._lock = None

    def clear(self) -> None:
        """Start afresh: remove what an earlier run wrote here (only the files a run writes)."""
        for name in OUTPUT_FILES:
            (self.path / name).unlink(missing_ok=True)
        for pattern in ("predictions.rank*.jsonl", "skipped.rank*.jsonl", "*.tmp"):
            for path in self.path.glob(pattern):
                path.unlink()

    def claim(self, meta: dict[str, Any], fresh: bool = False) -> None:
        """Create the directory and run.json, or check that an existing run.json is this run.

        Another identity (every run.json key but NOT_IDENTITY, runs/meta.py) is refused in one line naming every
        differing field and the flag that starts afresh; `fresh` clears the directory first.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        if fresh:
            self.clear()
        meta_path = self.path / RUN_JSON
        if meta_path.is_file():
            old = read_run_json(meta_path)
            differ = identity_differences(old, meta)
            if differ:
                raise HierError(
                    f"{self.path}: holds a run with another {', '.join(differ)}; "
                    f"add {FRESH_FLAG} to start afresh there, or use another --model.run_name"
                )
            meta = {**old, **meta, "created": old.get("created")}
        else:
            meta = {**meta, "created": meta.get("created") or now()}
        write_run_json(self.path, meta)

    def update_meta(self, **values: Any) -> None:
        write_run_json(self.path, {**read_run_json(self.path), **values})

    def consolidate(self) -> list[SamplePrediction]:
        """Merge every rank's streamed lines into predictions.jsonl (sorted by id); drop the parts.

        A cut-off last line (a kill mid-write) is left out, so that sample is simply redone.
        The same id twice must be the same prediction (a kill between merge and part removal),
        unless the later line was asked another request (its `request` digest differs: a resume
        re-asked it, `hiertrain.runs.request_digest`): then the later line replaces the earlier.
        """
        by_id: dict[int, SamplePrediction] = {}
        final = self.predictions_path
        sources = [final] if final.is_file() and final.stat().st_size > 0 else []
        parts = [p for p in sorted(self.path.glob("predictions.rank*.jsonl")) if p.stat().st_size > 0]
        for source in sources + parts:
            for sample in read_predictions(source).samples:
                old = by_id.setdefault(sample.id, sample)
                if old.to_json() == sample.to_json():
                    continue
                if sample.request is not None and sample.request != old.request:
                    by_id[sample.id] = sample  # re-asked with another request: the newer answer
                    continue
                raise HierError(f"{source}: sample {sample.id} differs from the one already recorded")
        merged = sorted(by_id.values(), key=lambda s: s.id)
        if parts:
            with atomic_path(self.predictions_path) as tmp:
                write_predictions(merged, tmp)
        for part in self.path.glob("predictions.rank*.jsonl"):
            part.unlink()
        return merged

    def finished_ids(self) -> list[int]:
        """Ids of the finished samples, sorted: what a resumed run skips.

        With no rank parts to merge, only predictions.jsonl's ids are read, in one streaming
        pass (`hiertrain.metrics.columnar`: the same validation and errors as `read_predictions`, no
        object per level); otherwise the parts are merged first (`consolidate`).
        """
        final = self.predictions_path
        parts = [p for p in self.path.glob("predictions.rank*.jsonl") if p.stat().st_size > 0]
        if parts or not final.is_file():
            return [p.id for p in self.consolidate()]
        for part in self.path.glob("predictions.rank*.jsonl"):
            part.unlink()  # empty parts: consolidate would drop them too
        if final.stat().st_size == 0:
            return []
        from hiertrain.metrics.columnar import read_columns

        return read_columns(final).ids.tolist()

    def finished_requests(self) -> dict[int, str | None]:
        """Each finished sample's stored request digest (None: a line written before the digest),
        after the same merge and checks as `finished_ids`: what a resume compares against."""
        ids = self.finished_ids()
        if not ids:
            return {}
        final = self.predictions_path
        out: dict[int, str | None] = {}
        with open(final, encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # blank, or the cut-off last line of a kill (not finished)
                    continue
                out[int(entry["id"])] = entry.get("request")
        wanted = set(ids)
        return {i: r for i, r in out.items() if i in wanted}

    def skipped(self) -> dict[int, dict[str, Any]]:
        """Skipped samples recorded by any rank (latest reason per id)."""
        out: dict[int, dict[str, Any]] = {}
        for path in sorted(self.path.glob("skipped*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # cut-off last line of a killed run
                    continue
                out[int(entry["id"])] = entry
        return out

    # ---------------------------------------------------------------- streaming

    def append(self, prediction: SamplePrediction) -> None:
        append_predictions([prediction], self.part("predictions"))

    def skip(self, sample_id: int, image: str, reason: str) -> None:
        line = json.dumps({"id": sample_id, "image": image, "reason": reason}, ensure_ascii=False) + "\n"
        try:
            with open(self.part("skipped"), "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
        except OSError as err:  # full disk: one line naming the file (a cut-off line is ignored on resume)
            raise write_error(self.part("skipped"), err) from None

    # ---------------------------------------------------------------- final outputs

    def finalize(
        self, served_ids: list[int], level_names: list[str], depth: int, meta: dict[str, Any], taxonomy: Any = None
    ) -> tuple[dict[str, Any], list[SamplePrediction]]:
        """Merge, then write results.json, metrics.json, the plot and summary.txt (rank 0). With the
        run's `taxonomy` metrics.json also holds mistake severity and path consistency."""
        merged = self.consolidate()
        wanted = set(served_ids)
        preds = [p for p in merged if p.id in wanted]
        skipped = {i: e for i, e in self.skipped().items() if i in wanted and i not in {p.id for p in preds}}
        write_atomic(self.path / "skipped.jsonl", "".join(json.dumps(skipped[i], ensure_ascii=False) + "\n" for i in sorted(skipped)))
        for part in self.path.glob("skipped.rank*.jsonl"):
            part.unlink()
        missing = sorted(wanted - {p.id for p in preds} - set(skipped))
        if missing:
            raise HierError(f"{self.path}: samples {missing[:10]} were neither evaluated nor skipped")
        metrics = compute_metrics(preds, depth, taxonomy)
        metrics.update(open_set_metrics(preds, depth) or {})  # open condition: verdict rates
        metrics.update(circular_metrics(preds, depth) or {})  # circular runs: first rotation, letter bias
        metrics.update(
            num_samples=len(preds),
            num_skipped=len(skipped),
            level_names=list(level_names[:depth]),
            leaf_label=leaf_label(str(meta.get("mode", "image"))),
        )
        with atomic_path(self.path / "results.json") as tmp:
            write_paper_results(preds, tmp)
        metrics = checked_metrics_json(metrics, self.path / "metrics.json")  # + schema_version (hiertrain.runs.schema)
        write_atomic(self.path / "metrics.json", _json(metrics))
        with atomic_path(self.path / "per_level_accuracy.png") as tmp:
            plot_per_level(metrics, tmp, title=meta.get("run_name", self.path.name))
        write_atomic(self.path / "summary.txt", summary_table(metrics, meta))
        self.update_meta(skipped=len(skipped), num_samples=len(preds))
        return metrics, preds

    def skip_reasons(self, count: int = 3) -> list[str]:
        """The first `count` skip reasons of the finalized run (each names its file)."""
        path = self.path / "skipped.jsonl"
        if not path.is_file():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()[:count]
        return [json.loads(line)["reason"] for line in lines]


def compute_metrics(preds: list[SamplePrediction], depth: int, taxonomy: Any = None) -> dict[str, Any]:
    """Every hierarchical metric over these predictions, JSON-ready (hiertrain.metrics.functional on
    all samples at once: the merged file holds every rank's samples, so nothing is synced). With the
    `taxonomy` also the measures that need it (hiertrain.metrics.placement); without, a line saying so."""
    from hiertrain.metrics.functional import hierarchical_scores, json_values, taxonomy_scores
    from hiertrain.metrics.placement import placement_tensors
    from hiertrain.metrics.predictions import to_tensors

    tensors = to_tensors(preds, depth)
    metrics = json_values(hierarchical_scores(*tensors))
    codes = None
    if taxonomy is None:
        metrics.update(taxonomy=None, taxonomy_note=NO_TAXONOMY + " (data.taxonomy)")
    else:
        try:
            codes = placement_tensors(preds, taxonomy, depth)
        except HierError as err:  # the taxonomy does not fit the questions: the run's other numbers stand
            metrics.update(taxonomy=None, taxonomy_note=f"{NO_TAXONOMY}: {taxonomy.source} does not fit the predictions ({err})")
            warnings.warn(metrics["taxonomy_note"], stacklevel=2)
        else:
            metrics.update(json_values(taxonomy_scores(*tensors, *codes)), taxonomy=str(taxonomy.source))
    return {**metrics, **uncertainty(preds, depth, codes=codes)}


def uncertainty(
    preds: list[SamplePrediction], depth: int, n_boot: int | None = None, ci: float | None = None, codes: Any = None
) -> dict[str, Any]:
    """metrics.json's `intervals` (bootstrap over images, hiertrain.metrics.bootstrap) and `chance`;
    `codes` = the (lca, links) placement tensors [N, depth], for the taxonomy measures' intervals."""
    from hiertrain.metrics.bootstrap import DEFAULT_BOOTSTRAP, DEFAULT_CI, PER_LEVEL_METRICS, bootstrap_intervals
    from hiertrain.metrics.chance import chance_levels
    from hiertrain.metrics.predictions import to_tensors

    n_boot, ci = DEFAULT_BOOTSTRAP if n_boot is None else n_boot, DEFAULT_CI if ci is None else ci
    lca, links = codes if codes is not None else (None, None)
    intervals = bootstrap_intervals(*to_tensors(preds, depth if codes is not None else None), n_boot=n_boot, ci=ci, lca=lca, links=links)
    for key in PER_LEVEL_METRICS:  # levels no sample reached: no interval, as no value
        if key in intervals:
            intervals[key] += [None] * (depth - len(intervals[key]))
    return {"intervals": intervals, "chance": chance_levels(preds, depth)}


def summary_table(metrics: dict[str, Any], meta: dict[str, Any]) -> str:
    """The table printed at the end of a run (per-level accuracy, HCA, leaf accuracy, overlaps)."""
    names = metrics.get("level_names", [])
    per_level = metrics.get("per_level_accuracy") or []
    width = max([len(n) for n in names] + [20])
    lines = [
        f"{meta.get('model_name', '?')} | {meta.get('dataset', '?')} | mode={meta.get('mode')} "
        f"answer={meta.get('answer')} variant={meta.get('prompt_variant')}",
        f"samples {metrics.get('num_samples')}  skipped {metrics.get('num_skipped')}",
        f"{'level':<{width}}  acc %",
    ]
    lines += [f"{name:<{width}}  {format_percent(acc, digits=1, width=5)}" for name, acc in zip(names, per_level)]
    labels = {**short_labels(), "leaf_accuracy": f"{leaf_label(str(meta.get('mode', 'image')))} accuracy"}
    for key, label in labels.items():
        lines.append(f"{label:<{width}}  {format_percent(metrics.get(key), digits=1, width=5)}")
    for key, (label, _) in MEASURE_LABELS.items():  # mean LCA depth / distance: levels and edges, not percent
        if key in metrics:
            lines.append(f"{label:<{width}}  {format_measure(metrics[key]):>5}")
    if metrics.get("taxonomy_note"):
        lines.append(metrics["taxonomy_note"])
    circular = metrics.get("circular")
    if circular:  # the values above count a level right only if every rotation is
        first, bias = circular["first_rotation"], circular["letter_bias"]
        lines.append(f"{'HCA, first rotation':<{width}}  {format_percent(first.get('hca'), digits=1, width=5)}")
        if bias.get("p_value") is not None:
            picks = ", ".join(f"{k} {100 * v:.0f}%" for k, v in zip(bias["letters"], bias["pick_rate"]))
            lines.append(f"letter bias: picks {picks}; chi2 {bias['chi2']:.1f}, df {bias['df']}, p {bias['p_value']:.2g}")
    return "\n".join(lines) + "\n"


def plot_per_level(metrics: dict[str, Any], path: Path, title: str = "") -> None:
    """Bar chart of per-level accuracy with the HCA and leaf accuracy as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = metrics.get("level_names", [])
    values = [0.0 if v is None else 100 * v for v in (metrics.get("per_level_accuracy") or [])]
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(names) + 2), 3.2))
    bounds = (metrics.get("intervals") or {}).get("per_level_accuracy") or []
    err = [[v - 100 * b[0] if b else 0.0 for v, b in zip(values, bounds)], [100 * b[1] - v if b else 0.0 for v, b in zip(values, bounds)]]
    ax.bar(range(len(values)), values, color="#4C72B0", yerr=err if len(bounds) == len(values) else None, capsize=3)
    chance = (metrics.get("chance") or {}).get("per_level_accuracy") or []
    for i, c in enumerate(chance[: len(values)]):
        if c is not None:  # uniform guessing among the shown options (hiertrain.metrics.chance)
            ax.hlines(100 * c, i - 0.4, i + 0.4, colors="#d62728", linewidth=2, label="chance" if i == 0 else None)
    ax.set_xticks(range(len(values)), names[: len(values)], rotation=30, ha="right")
    for key, style in (("hca", "--"), ("leaf_accuracy", ":")):
        if metrics.get(key) is not None:
            name = key if key == "hca" else f"{metrics.get('leaf_label', 'leaf')} accuracy"
            ax.axhline(100 * metrics[key], color="k", linestyle=style, label=f"{name} {100 * metrics[key]:.1f}")
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy %")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
