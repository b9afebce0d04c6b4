"""The before/after LoRA table: base vs tuned model, visual and text HCA, with deltas.

The paper's layout (arXiv 2505.24840, LoRA section): one row per (dataset, question mode),
the base model's score, the tuned model's, and the difference. Written as
`before_after.json` (contract in docs/ARCHITECTURE.md, read by `hiertrain report`) and as a
markdown table for people.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from hiertrain.base.atomic import write_atomic
from hiertrain.base.errors import HierError
from hiertrain.metrics.metric_labels import format_percent

# Scalar metrics carried into each row; per-level lists stay in the evaluation's own files.
ROW_METRICS = ("hca", "leaf_accuracy", "point_overlap", "hierarchical_f1", "unparseable_rate")


@dataclass
class BeforeAfterRow:
    """One (dataset, mode) pair: the same questions put to the base and the tuned model."""

    dataset: str
    mode: str
    before: dict[str, float | None]
    after: dict[str, float | None]
    chance: float | None = None
    num_samples: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def delta(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name in ROW_METRICS:
            b, a = self.before.get(name), self.after.get(name)
            out[name] = None if a is None or b is None else a - b
        return out

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "dataset": self.dataset,
            "mode": self.mode,
            "before": {k: self.before.get(k) for k in ROW_METRICS},
            "after": {k: self.after.get(k) for k in ROW_METRICS},
            "delta": self.delta,
        }
        if self.chance is not None:
            row["chance"] = {"hca": self.chance}
        if self.num_samples is not None:
            row["num_samples"] = self.num_samples
        row.update(self.extra)
        return row


def before_after_doc(rows: list[BeforeAfterRow], base: str, tuned: str) -> dict[str, Any]:
    """The `before_after.json` object."""
    seen: set[tuple[str, str]] = set()
    for row in rows:
        if row.mode not in ("image", "text"):
            raise HierError(f"before/after row {row.dataset}: mode {row.mode!r} is not 'image' or 'text'")
        if (row.dataset, row.mode) in seen:
            raise HierError(f"before/after: {row.dataset} ({row.mode}) appears twice")
        seen.add((row.dataset, row.mode))
    return {"rows": [r.to_json() for r in rows], "base": base, "tuned": tuned}


def _delta(row: dict[str, Any], name: str) -> str:
    """The signed delta, with the paired bootstrap interval when the row has one."""
    from hiertrain.report.compare import difference_text

    entry = (row.get("paired") or {}).get("metrics", {}).get(name)
    return difference_text(entry) if entry else format_percent(row["delta"].get(name), signed=True)


def _p(row: dict[str, Any], name: str) -> str:
    test = (row.get("paired") or {}).get("metrics", {}).get(name, {}).get("mcnemar")
    return "-" if not test else f"{test['p']:.3g}"


def markdown(doc: dict[str, Any]) -> str:
    """HCA and last-level accuracy (%) before, after and the delta, one line per dataset and mode.
    The last level is the leaf in visual rows and the deepest asked level in text rows (the text
    questions name the leaf), so the column is not called "leaf".

    Rows with a paired comparison (`paired`, hiertrain.metrics.paired) show the delta's paired
    bootstrap interval `[low, high]` and two more columns: the exact McNemar p of HCA and of the
    last level.
    """
    paired = any(row.get("paired") for row in doc["rows"])
    head = (
        "| dataset | questions | chance HCA | HCA before | HCA after | Δ HCA | last level before | last level after "
        "| Δ last level |"
    )
    if paired:
        head += " McNemar p HCA | McNemar p last level |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in doc["rows"]:
        b, a = row["before"], row["after"]
        mode = "visual" if row["mode"] == "image" else "text"
        chance = (row.get("chance") or {}).get("hca")
        line = (
            f"| {row['dataset']} | {mode} | {format_percent(chance)} | {format_percent(b.get('hca'))} | {format_percent(a.get('hca'))} | "
            f"{_delta(row, 'hca')} | {format_percent(b.get('leaf_accuracy'))} | {format_percent(a.get('leaf_accuracy'))} | "
            f"{_delta(row, 'leaf_accuracy')} |"
        )
        if paired:
            line += f" {_p(row, 'hca')} | {_p(row, 'leaf_accuracy')} |"
        lines.append(line)
    if paired:
        first = next(row["paired"] for row in doc["rows"] if row.get("paired"))
        lines += ["", f"Δ: after - before in points [{100 * first['ci']:g}% paired bootstrap over images, {first['bootstrap']} replicates]; "
                  "McNemar: exact two-sided test on the images only one model got right."]
    return "\n".join(lines) + "\n"


def write_before_after(run_dir: str | Path, doc: dict[str, Any]) -> Path:
    """Write `before_after.json` and `before_after.md` into `run_dir`; return the JSON path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = write_atomic(run_dir / "before_after.json", json.dumps(doc, indent=2) + "\n")
    write_atomic(run_dir / "before_after.md", markdown(doc))
    return path


# ---------------------------------------------------------------------- evaluation


def chance_hca(records: list[Any], mode: str) -> float | None:
    """Expected HCA of uniform guessing: mean over samples of prod(1 / #options) over asked levels."""
    from hiertrain.protocol.prompts import asked_levels

    if not records:
        return None
    total = 0.0
    for record in records:
        p = 1.0
        for i in asked_levels(record.truths, mode):
            p /= len(record.choices[i])
        total += p
    return total / len(records)


def evaluate_split(
    tuner: Any, data: Any, split: str, adapter: bool, keep: list[Any] | None = None
) -> tuple[dict[str, Any], int, int]:
    """(metrics, samples, skipped) of `tuner` on one split of a `HierTuningDataModule`, the
    adapter on or off (off = the base model exactly: LoRA layers bypassed). The data module's
    `eval_loader` (as `hiertrain test` and LoRA validation: sharded over ranks, padding marked),
    each batch scored by `score_batch` through the tuner's answerer; every sample is answered
    once and the results gathered. Iterated here, not by a Lightning loop: it runs inside `fit`'s
    end hook, where Lightning cannot start another loop. `keep`:
    receives the gathered predictions (for the paired comparison)."""
    from contextlib import nullcontext

    from torchmetrics.aggregation import SumMetric
    from tqdm import tqdm

    from hiertrain.modules.evaluation_loop import gather_predictions, score_batch
    from hiertrain.runs.eval_outputs import compute_metrics

    protocol = tuner.scorable(data.protocol)
    loader = data.eval_loader(data.split_dataset(split))  # the batches `hiertrain test` and LoRA validation iterate
    preds: list[Any] = []
    skipped = SumMetric().to(tuner.device)  # summed over ranks by torchmetrics' own sync
    context = nullcontext() if adapter else tuner.model.disable_adapter()
    label = f"{'after' if adapter else 'before'}: {data.questions} ({protocol.mode})"
    with context:
        for batch in tqdm(loader, desc=label, leave=False):
            scored = score_batch(batch, lambda good: tuner.answer(good, protocol))
            preds.extend(scored.predictions)
            skipped.update(float(len(scored.skipped)))
    preds = gather_predictions(preds)  # per sample: the paired comparison and the severity measures need them
    if keep is not None:
        keep.extend(preds)
    metrics = compute_metrics(preds, data.depth, getattr(data, "taxonomy", None))  # taxonomy: severity measures
    return metrics, len(preds), int(skipped.compute().item())


def paired_before_after(before: list[Any], after: list[Any]) -> dict[str, Any] | None:
    """`hiertrain.metrics.paired` of after against before on the same images (None if no image)."""
    from hiertrain.metrics.paired import paired_comparison
    from hiertrain.metrics.predictions import to_tensors

    if not before:
        return None
    if [p.id for p in before] != [p.id for p in after]:
        raise HierError("before/after: the base and the tuned model answered different samples")
    a, b = to_tensors(before), to_tensors(after)
    if a[0].shape != b[0].shape or not bool((a[1] == b[1]).all()):
        raise HierError("before/after: the base and the tuned model were asked different levels")
    return paired_comparison(a, b)


class BeforeAfterEvaluation(Callback):
    """After `fit`: base vs tuned on every configured question set, image and text questions.

    Add it to `trainer.callbacks` (the LoRA configs do); it writes `before_after.json`,
    `before_after.md` and `run.json` (kind "lora") next to the exported adapter.

    Args:
        datasets: `{name: HierTuningDataModule init args}` (questions, taxonomy, subject, ...).
        modes: question modes to compare ("image", "text").
        split: the split to score (never the one checkpoints were chosen on).
        batch_size: images per evaluation step.
    """

    def __init__(
        self,
        datasets: dict[str, dict[str, Any]],
        modes: list[str] = ["image", "text"],  # noqa: B006 (jsonargparse needs a literal default)
        split: str = "test",
        batch_size: int = 8,
    ) -> None:
        if not datasets:
            raise HierError("BeforeAfterEvaluation: no datasets configured")
        for mode in modes:
            if mode not in ("image", "text"):
                raise HierError(f"BeforeAfterEvaluation: mode {mode!r} is not 'image' or 'text'")
        self.datasets, self.modes, self.split, self.batch_size = datasets, list(modes), split, batch_size
        self.doc: dict[str, Any] | None = None

    def rows(self, tuner: Any) -> list[BeforeAfterRow]:
        from hiertrain.datamodules.tuning import HierTuningDataModule

        rows = []
        for name, args in self.datasets.items():
            for mode in self.modes:
                data = HierTuningDataModule(**{**args, "mode": mode, "batch_size": self.batch_size})
                data.connect(processor=tuner.processor, family=tuner.family)
                before_preds: list[Any] = []
                after_preds: list[Any] = []
                before, n, skipped = evaluate_split(tuner, data, self.split, adapter=False, keep=before_preds)
                after, _, _ = evaluate_split(tuner, data, self.split, adapter=True, keep=after_preds)
                chance = chance_hca(data.split_records(self.split), mode)
                extra = {"skipped": skipped, "split": self.split, "paired": paired_before_after(before_preds, after_preds)}
                rows.append(BeforeAfterRow(name, mode, before, after, chance, n, extra))
        return rows

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        adapter = pl_module.finalize_adapter()
        rows = self.rows(pl_module)
        self.doc = before_after_doc(rows, base=str(pl_module.pretrained), tuned=str(adapter))
        if trainer.is_global_zero:
            run_dir = adapter.parent
            write_before_after(run_dir, self.doc)
            write_run_json(run_dir, pl_module, trainer.datamodule, adapter)
            print(markdown(self.doc), end="", flush=True)
        trainer.strategy.barrier("hiertrain-before-after-written")


def write_run_json(run_dir: Path, tuner: Any, data: Any, adapter: Path) -> None:
    """`run.json` of kind "lora" (docs/ARCHITECTURE.md, run directories) for `hiertrain report`."""
    from hiertrain.runs import meta as run_meta

    meta = run_meta.RunMeta.for_questions(
        "lora", tuner.pretrained, data, "logits", hashed=True, num_samples=len(data.split_records(data.train_split)),
        fields={
            # The run's name in reports: the run root's folder, not Lightning's "checkpoints" beside the adapter.
            "run_name": run_dir.parent.name if run_dir.name == "checkpoints" else run_dir.name,
            "base": str(tuner.pretrained),
            "adapter": str(adapter),
            "hparams": {k: v for k, v in dict(tuner.hparams).items() if k != "pretrained"},
            # what training images were resized to (the paper's LoRA: 256*28*28 .. 1280*28*28)
            "tuning_images": data.image_settings() if hasattr(data, "image_settings") else None,
            "adapter_choice": getattr(tuner, "adapter_choice", None),
        },
    )
    run_meta.write_run_json(run_dir, meta)
