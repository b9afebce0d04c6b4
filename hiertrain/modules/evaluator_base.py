"""What every frozen evaluator shares: the run directory, resume, streaming, final metrics.

Subclasses only build their answerer (`hiertrain.answerers`: dataset items -> `SamplePrediction`s
under the data's `QuestionProtocol`); the module is a thin Lightning wrapper around it.
Everything else follows the same steps whatever the model:
- `setup`: rank 0 locks and claims the run directory (`RunMeta`, identity checked) and merges
  what a previous (maybe killed) run streamed; the finished sample ids are broadcast and left
  out of the dataloader. When every sample is finished (a run killed during finalize, or a
  finished run rerun) Lightning runs no test loop, so the outputs are finalized right here.
- `test_step`: padding copies of the distributed sampler are dropped, unreadable images are
  recorded as skipped, each finished sample is appended to this rank's predictions part.
- `on_test_epoch_end`: rank 0 merges the parts and writes metrics, results, plot and table
  from the merged file; the metrics are broadcast and logged by every rank. A run with no
  scored sample fails (exit 2) naming the first skip reasons; skipping more than the data's
  `max_skip_rate` warns.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from collections.abc import Collection
from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info

from hiertrain.answerers.base import Answerer, sample_prediction  # noqa: F401  (sample_prediction: one home, re-exported)
from hiertrain.protocol import conditions
from hiertrain.base.errors import HierError
from hiertrain.metrics.predictions import SamplePrediction
from hiertrain.protocol.protocol import QuestionProtocol
from hiertrain.modules.sample_table import DEFAULT_LOG_SAMPLES
from hiertrain.runs.eval_outputs import RunDirectory
from hiertrain.runs.meta import RunMeta, file_sha256, weights_fingerprint

# Overriding transfer_batch_to_device on the module (items hold PIL images) is deliberate.
warnings.filterwarnings("ignore", message="You have overridden `transfer_batch_to_device`")


class QuestionEvaluator(LightningModule):
    """Base of the frozen evaluators (`hiertrain test`). `run_name` defaults to
    `<model>-<dataset>-<mode>-<answer>-v<variant>` inside `--trainer.default_root_dir`."""

    answer_kind = "?"
    answer_parser = "strict"  # how a generated reply becomes a letter (VLLMEvaluator: a setting)
    generates = ("generate",)  # the answer kinds whose replies are generated text
    supported_conditions: Collection[str] = ("plain",)  # question conditions it can answer (hiertrain.protocol.conditions)
    supported_inference: tuple[str, ...] = ("independent",)  # inference modes it can answer
    supports_circular = False  # whether it asks the rotations of `data.circular`
    backend = "transformers"  # how the model runs: in this process; "served" = behind an OpenAI-compatible API

    def __init__(self, pretrained: str, run_name: str | None = None) -> None:
        super().__init__()
        self.pretrained, self.run_name = pretrained, run_name
        self.fresh = False  # `hiertrain test ... --fresh true`: clear the run directory first
        self.log_samples = DEFAULT_LOG_SAMPLES  # rows of the W&B sample table (`--wandb_log_samples`)
        self.run_dir: RunDirectory | None = None
        self.meta: dict[str, Any] = {}
        self.final_metrics: dict[str, Any] | None = None
        self.matcher: Any = None  # open condition: hiertrain.protocol.open_set.OpenSetMatcher
        self.protocol: QuestionProtocol | None = None  # the data's question protocol (`setup`)
        self.answerer: Answerer | None = None  # the backend (`hiertrain.answerers`), built by the subclass
        self.done_requests: dict[int, str] = {}  # a resume's finished samples with a stored request digest

    # ---------------------------------------------------------------- the answerer

    # Subclasses build `self.answerer` (`hiertrain.answerers`: HF, served, CLIP) once the protocol is
    # known (`setup`); everything a run asks and reads goes through it.

    def answer_items(self, items: list[dict[str, Any]], mode: str) -> list[SamplePrediction]:
        """The items' predictions (`Answerer.answer`; `mode` is the protocol's)."""
        return self.answerer.answer(items)

    def request_texts(self, item: dict[str, Any]) -> Any:
        """What this backend sends for one item (its request digest's text part, `Answerer.request_texts`):
        HF the templated chat texts, served the request bodies, CLIP the option prompts."""
        return self.answerer.request_texts(item)

    def request_generation(self) -> dict[str, Any]:
        """The settings that turn a request into an answer (its request digest's generation part)."""
        return {
            "answer": self.answer_kind, "answer_parser": self.answer_parser, "max_new_tokens": self.meta.get("max_new_tokens"),
            "condition": self.meta.get("condition"), "inference": self.meta.get("inference"), "settings": self.meta.get("settings"),
        }  # fmt: skip

    def sample_request(self, item: dict[str, Any]) -> str:
        """The digest of the exact request this item is asked (`hiertrain.runs.request_digest`)."""
        from hiertrain.runs.request_digest import image_sha256, request_digest

        weights = self.meta.get("weights")
        model = weights if weights else (os.path.basename(self.pretrained) if os.path.isabs(self.pretrained) else self.pretrained)
        return request_digest(
            backend=f"{self.backend}:{type(self).__name__}",
            model=model,
            texts=self.request_texts(item),
            options=[list(lq.options) for lq in item["levels"]],
            image=image_sha256(item.get("path")),  # image mode only: the file's bytes (decoded or not)
            generation=self.request_generation(),
        )

    def image_refusal(self, item: dict[str, Any]) -> str | None:
        """Why this model cannot take the item's (readable) image, or None (`Answerer.image_refusal`)."""
        return self.answerer.image_refusal(item)

    @property
    def condition(self) -> conditions.Condition:
        """The run's question condition (plain before `setup` knows the protocol)."""
        return conditions.condition_of(self.protocol.condition if self.protocol is not None else "plain")

    # ---------------------------------------------------------------- setup

    def _datamodule(self):
        from hiertrain.datamodules.questions import HierVQADataModule

        dm = getattr(self.trainer, "datamodule", None)
        if not isinstance(dm, HierVQADataModule):
            raise HierError(f"{type(self).__name__} needs a HierVQADataModule (--data), got {type(dm).__name__}")
        return dm

    def run_settings(self) -> dict[str, Any]:
        """Evaluator settings that decide the numbers (part of the run's identity)."""
        return {}

    def named_meta(self, dm) -> RunMeta:
        """The fields a run is named by (no file is hashed): the one source of both the run
        directory name and the W&B run name (`hiertrain.cli.lightning`), so they are equal."""
        meta = RunMeta.for_questions("eval", self.pretrained, dm, self.answer_kind)
        meta.fields["run_name"] = self.run_name or self.default_run_name(meta)
        return meta

    def default_run_name(self, meta: RunMeta) -> str:
        """The run directory (and W&B run) name when `run_name` is not given."""
        return meta.run_name

    def describe(self, dm) -> RunMeta:
        """This run's `RunMeta` (the data module's fields + this evaluator's settings)."""
        meta = self.named_meta(dm)
        meta.questions_sha256 = file_sha256(dm.questions)
        named = meta.fields  # the protocol's fields (`QuestionProtocol.to_json`) and the run name, by RunMeta
        meta.fields = {
            "backend": self.backend,
            **{key: value for key, value in named.items() if key != "run_name"},
            "drop_trivial_levels": dm.drop_trivial_levels,
            "taxonomy": dm.taxonomy_path,
            "limit": dm.limit,
            "split": dm.split,
            "weights": weights_fingerprint(self.pretrained),
            "settings": self.run_settings(),
            # Not identity: where the images are (the report's failure gallery finds them by these).
            "image_dir": os.path.abspath(dm.image_dir),
            "image_root_map": {k: v if os.path.isabs(v) else os.path.join(os.getcwd(), v) for k, v in dm.image_root_map.items()},
            "run_name": named["run_name"],
        }
        return meta

    def run_meta(self, dm) -> dict[str, Any]:
        """The run.json object of this run (see `describe`)."""
        meta = self.describe(dm).to_json()
        for key in ("num_samples", "skipped"):  # filled in by finalize
            meta.pop(key)
        return meta

    def setup(self, stage: str) -> None:
        dm = self._datamodule()
        dm.setup(stage)
        protocol = dm.protocol
        if protocol.condition not in self.supported_conditions:
            raise HierError(f"{type(self).__name__} cannot answer condition {protocol.condition!r} (it answers {', '.join(self.supported_conditions)})")
        if protocol.inference not in self.supported_inference:
            raise HierError(f"{type(self).__name__} cannot answer inference {protocol.inference!r} (it answers {', '.join(self.supported_inference)})")
        if protocol.circular and not self.supports_circular:
            raise HierError(f"{type(self).__name__} does not ask circular rotations (data.circular: true)")
        self.protocol = protocol
        self.meta = self.run_meta(dm)
        if protocol.condition_class.generate_only and self.answer_kind not in self.generates:
            raise HierError(f"condition {protocol.condition!r} needs answer: generate (its replies are text, not one letter)")
        if protocol.condition_class.open_set:
            from hiertrain.protocol.open_set import OpenSetMatcher

            self.matcher = OpenSetMatcher.from_taxonomy(dm.taxonomy)
        self.run_dir = RunDirectory(Path(self.trainer.default_root_dir) / self.meta["run_name"], rank=self.global_rank)
        finished: dict[int, str | None] = {}
        if self.global_rank == 0:
            self.run_dir.lock()
            try:
                self.run_dir.claim(self.meta, fresh=self.fresh)
                finished = self.run_dir.finished_requests()  # id -> stored request digest
            except BaseException:
                self.run_dir.unlock()  # Lightning calls no teardown when setup fails
                raise
        finished = self.trainer.strategy.broadcast(finished, src=0)
        # A line with a digest is reused only if this run would ask the same request: such samples
        # are served again and checked where the batch is rendered (`_answer_batch`), before the
        # model is called. Lines without one (written before the digest) are reused as before.
        self.done_requests = {i: r for i, r in finished.items() if r is not None}
        dm.exclude_ids = {i for i, r in finished.items() if r is None}
        dm.deferred_ids = set(self.done_requests)  # their images are decoded only if they are asked again
        if finished:
            rank_zero_info(f"resuming {self.run_dir.path}: {len(finished)} samples already done")
        if set(dm.served_ids()) <= dm.exclude_ids:
            self._finalize(log=False)  # nothing left to answer: Lightning will not run the test loop

    def teardown(self, stage: str) -> None:
        if self.run_dir is not None:
            self.run_dir.unlock()

    # ---------------------------------------------------------------- steps

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        """Items hold PIL images and records; the answerers move their own tensors."""
        return batch

    def test_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        try:
            self._answer_batch(batch)
        except BaseException:
            self.run_dir.unlock()  # a failed run (full disk) must not hold the directory: no hook follows
            raise

    def _answer_batch(self, batch: list[dict[str, Any]]) -> None:
        from hiertrain.datamodules.questions import read_image
        from hiertrain.modules.evaluation_loop import score_batch

        requests: dict[int, str] = {}
        for item in batch:
            if not item["valid"] or item["error"]:
                continue
            digest = self._stored_request(item) if item.get("deferred") else self.sample_request(item)
            if digest is not None and self.done_requests.get(item["sample_id"]) == digest:
                item["valid"] = False  # finished with this very request: reused, not asked again
                continue
            if item.get("deferred"):  # a finished sample asked again: its image is needed now
                read_image(item, self._datamodule().on_bad_image)
                if item["error"]:
                    continue
                digest = digest or self.sample_request(item)
            requests[item["sample_id"]] = digest
        scored = score_batch(
            batch,
            lambda good: self.answer_items(good, self.meta["mode"]),
            check=self._refusal,
            on_skip=lambda item: self.run_dir.skip(item["sample_id"], item["record"].image, item["error"]),
        )
        for prediction in scored.predictions:
            prediction.request = requests.get(prediction.id)
            self.run_dir.append(prediction)

    def _stored_request(self, item: dict[str, Any]) -> str | None:
        """The request digest of a finished sample whose image is not decoded (`deferred`); None
        when its file cannot be read now (it is then decoded, and so skipped, like any other)."""
        try:
            return self.sample_request(item)
        except OSError:
            return None

    def _refusal(self, item: dict[str, Any]) -> str | None:
        """Why this model cannot be asked a readable item (e.g. Qwen's aspect-ratio limit): named and
        counted like an unreadable file, or an error under `on_bad_image: error`."""
        refusal = None if item["image"] is None else self.image_refusal(item)
        if not refusal:
            return None
        where = item.get("path", item["record"].image)
        message = f"{where}: cannot read image of sample {item['sample_id']} for this model ({refusal})"
        if self._datamodule().on_bad_image == "error":
            raise HierError(message)
        return message

    def on_test_epoch_end(self) -> None:
        self._finalize()

    def _finalize(self, log: bool = True) -> None:
        """Rank 0 writes every output from the merged predictions; all ranks log the metrics."""
        strategy = self.trainer.strategy
        strategy.barrier("hiertrain-predictions-written")
        result: tuple[dict[str, Any], list[str], bool] | None = None
        if self.global_rank == 0:
            dm = self._datamodule()
            served = dm.served_ids()
            # Whether this run asked or skipped anything: a rerun that reused every line (same
            # request digests) logs nothing, like one finalized in setup.
            asked = any(
                part.stat().st_size > 0
                for name in ("predictions", "skipped")
                for part in self.run_dir.path.glob(f"{name}.rank*.jsonl")
            )
            try:
                # data.taxonomy (when given) places each pick for mistake severity / path consistency
                taxonomy = getattr(dm, "taxonomy", None)
                metrics, preds = self.run_dir.finalize(served, list(self.protocol.level_names), dm.depth, self.meta, taxonomy)
            except BaseException:
                self.run_dir.unlock()  # a failed run (full disk) must not hold the directory
                raise
            print((self.run_dir.path / "summary.txt").read_text(encoding="utf-8"), end="", flush=True)
            print(f"run directory: {self.run_dir.path}", flush=True)
            result = (metrics, self.run_dir.skip_reasons(), asked)
            self._warn_skips(metrics, result[1], dm.max_skip_rate)
            self._log_artifacts(preds)
        metrics, reasons, asked = strategy.broadcast(result, src=0)
        self.final_metrics = metrics
        if not metrics["num_samples"]:
            self.run_dir.unlock()
            why = "; ".join(reasons) if reasons else "no sample was served"
            raise HierError(f"{self.run_dir.path}: no sample was scored ({metrics['num_skipped']} skipped; first: {why})")
        if not log or not asked:  # finalized in setup, or every line reused: nothing new to log
            return
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "schema_version":
                self.log(f"test/{key}", float(value), sync_dist=True)  # equal on all ranks
        for name, value in zip(metrics["level_names"], metrics["per_level_accuracy"] or []):
            if value is not None:
                self.log(f"test/acc_{name}", float(value), sync_dist=True)  # equal on all ranks

    @staticmethod
    def _warn_skips(metrics: dict[str, Any], reasons: list[str], max_rate: float) -> None:
        """A loud warning when more than `max_rate` of the served samples were skipped."""
        skipped, total = metrics["num_skipped"], metrics["num_skipped"] + metrics["num_samples"]
        if total and metrics["num_samples"] and skipped / total > max_rate:
            print(
                f"WARNING: {skipped} of {total} samples ({100 * skipped / total:.1f}%) were skipped, more than "
                f"{100 * max_rate:g}% (--data.max_skip_rate); first: {'; '.join(reasons)}",
                file=sys.stderr,
                flush=True,
            )

    def _log_artifacts(self, preds: list[SamplePrediction]) -> None:
        """The plot and the sample table where the logger can show them (W&B); `wandb.json` in
        the run directory says which W&B run holds them (linked by `hiertrain report`)."""
        from lightning.pytorch.loggers import WandbLogger

        from hiertrain.base.atomic import write_atomic
        from hiertrain.taxonomy.images import resolve_image
        from hiertrain.modules.sample_table import sample_table
        from hiertrain.runs.meta import WANDB_JSON, to_json_text

        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="per_level_accuracy", images=[str(self.run_dir.path / "per_level_accuracy.png")])
                tables: dict[str, int] = {}
                if self.log_samples > 0:
                    dm = self._datamodule()
                    locate = None
                    if self.meta["mode"] == "image":
                        locate = lambda image: resolve_image(image, dm.image_dir, dm.image_root_map)  # noqa: E731
                    columns, rows = sample_table(preds, self.log_samples, self.meta.get("answer") == "generate", locate)
                    logger.log_table(key="samples", columns=columns, data=rows)
                    tables["samples"] = len(rows)
                run = logger.experiment
                offline = bool(getattr(run.settings, "_offline", False)) or getattr(run.settings, "mode", "") in ("offline", "dryrun")
                info = {
                    "project": run.project, "run_id": run.id, "name": run.name, "mode": "offline" if offline else "online",
                    "url": None if offline else run.url, "dir": str(Path(run.dir).parent), "tables": tables,
                }  # fmt: skip
                write_atomic(self.run_dir.path / WANDB_JSON, to_json_text(info))
