"""LoRA tuning of a vision LLM's language model on hierarchical questions: `hiertrain fit`.

The paper (arXiv 2505.24840) tunes Qwen2.5-VL-7B's LLM with LoRA (rank 64, alpha 64, dropout
0.2, lr 5e-5, weight decay 0.1, cosine with 3% warm-up, 1 epoch) on iNat21-Plant questions.
Only the language model's q/k/v/o and gate/up/down projections get adapters (see
`hiertrain.vlm.lora_targets`); vision tower and projector stay frozen.

- Training batches come from `HierTuningDataModule` (prompt tokens masked, target = letter +
  end of turn); validation items are scored exactly as `VLLMEvaluator` scores test items, into
  the evaluation's torchmetrics (exact under DDP), logged as `val/hca` etc. for ModelCheckpoint.
- Lightning checkpoints hold only the LoRA weights (+ optimizer state), so `--ckpt_path last`
  resumes a killed fit without rewriting a 7B model per checkpoint; the data module adds where
  the training loader stood and the RNG states (`hiertrain.datamodules.sampling.ResumableLoader`),
  so the resumed fit trains on the batches and draws of an uninterrupted one.
- At the end of fit the best checkpoint's adapter (by the monitored metric, else the last
  weights) is loaded into the model and written in PEFT format to `<checkpoint dir>/adapter`
  with the processor; `hiertrain lora merge` folds it into a plain model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info

from hiertrain.base.errors import HierError
from hiertrain.datamodules.tuning import HierTuningDataModule
from hiertrain.protocol.protocol import QuestionProtocol

ADAPTER_DIRNAME = "adapter"


class LoRATuner(LightningModule):
    """PEFT LoRA on the language model of `pretrained`; validation = hierarchical metrics.

    Args:
        pretrained: hub id or local dir of the base (V)LLM.
        rank / alpha / dropout: LoRA r, lora_alpha, lora_dropout (paper: 64 / 64 / 0.2).
        lr / weight_decay / warmup_ratio: AdamW and the cosine schedule (paper: 5e-5 / 0.1 / 0.03).
        target_modules: PEFT regex; default = the language model's projections only, anchored on
            its position in the model (a plain name list would also adapt the vision MLPs).
        dtype: weights' dtype at load ("bfloat16" on GPUs with `--trainer.precision bf16-mixed`).
        gradient_checkpointing: recompute activations in backward (long visual sequences on GPU).
        adapter_dir: where the final PEFT adapter goes (default `<checkpoint dir>/adapter`).
        export: which weights become the adapter: "best" (default: the ModelCheckpoint's best
            by the monitored validation metric, else the last) or "last" (the final weights, as
            the paper's train.py:211-223 saves them after its one epoch; a best-validation
            checkpoint, if one is tracked, stays on disk).
    """

    def __init__(
        self,
        pretrained: str,
        rank: int = 64,
        alpha: int = 64,
        dropout: float = 0.2,
        lr: float = 5e-5,
        weight_decay: float = 0.1,
        warmup_ratio: float = 0.03,
        target_modules: str | None = None,
        dtype: str = "float32",
        attn_implementation: str | None = "sdpa",
        gradient_checkpointing: bool = False,
        adapter_dir: str | None = None,
        export: str = "best",
    ) -> None:
        super().__init__()
        if export not in ("best", "last"):
            raise HierError(f"LoRA export {export!r} is not 'best' or 'last'")
        if rank < 1 or alpha <= 0 or not 0 <= dropout < 1:
            raise HierError(f"LoRA needs rank >= 1, alpha > 0, 0 <= dropout < 1; got {rank}, {alpha}, {dropout}")
        if not 0 <= warmup_ratio < 1:
            raise HierError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        self.save_hyperparameters()
        self.pretrained = pretrained
        self.model: Any = None
        self.processor: Any = None
        self.strict_loading = False  # checkpoints carry the LoRA weights only (checked on load)
        self._scorers: dict[Any, Any] = {}  # QuestionProtocol -> HFAnswerer on the tuned model, kept out of the module tree
        self.val_metrics: Any = None
        self.val_depth, self.val_protocol = 0, None  # the validation data's (`setup`)
        self.exported_adapter: Path | None = None
        self.adapter_choice: str | None = None  # what the exported adapter is (run.json)

    # ------------------------------------------------------------------ model

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from peft import LoraConfig, get_peft_model

        from hiertrain.vlm.family import family_of
        from hiertrain.vlm.loading import load_vllm
        from hiertrain.vlm.lora_targets import check_adapted, check_targets

        base, self.processor = load_vllm(self.pretrained, self.hparams.dtype, self.hparams.attn_implementation)
        family = family_of(base)
        language_model = family.language_model(base)
        pattern = self.hparams.target_modules or family.lora_pattern(base)
        check_targets(base, language_model, pattern, complete=self.hparams.target_modules is None)
        config = LoraConfig(
            r=self.hparams.rank,
            lora_alpha=self.hparams.alpha,
            lora_dropout=self.hparams.dropout,
            target_modules=pattern,
            bias="none",
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(base, config)
        check_adapted(self.model, frozen_parts(base), language_model)
        self.model.train()  # as HF Trainer: LoRA dropout on; validation switches to eval itself
        if self.hparams.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.config.use_cache = False

    @property
    def hf_model(self) -> Any:
        """The transformers model with the LoRA layers injected (what the answerer calls)."""
        return self.model.get_base_model()

    @property
    def family(self) -> Any:
        """The tuned model's `hiertrain.vlm.family.ModelFamily`."""
        from hiertrain.vlm.family import family_of

        return family_of(self.hf_model)

    def setup(self, stage: str) -> None:
        self.configure_model()
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if isinstance(dm, HierTuningDataModule):  # the one call that hands the data module the model side
            dm.connect(processor=self.processor, family=self.family)
        if dm is not None and hasattr(dm, "depth"):
            from hiertrain.metrics.classes import hierarchical_metrics

            self.val_depth = dm.depth  # sets the data up: its protocol then knows the level names
            self.val_protocol = self.scorable(dm.protocol)
            self.val_metrics = hierarchical_metrics(self.val_depth)

    @staticmethod
    def scorable(protocol: QuestionProtocol) -> QuestionProtocol:
        """`protocol` if its questions can be tuned on and scored by letter logits, else HierError."""
        if protocol.condition_class.generate_only:
            raise HierError(
                f"LoRATuner: condition {protocol.condition!r} is answered by generated text; LoRA tuning and its "
                "validation score option letters (use a letter condition: plain, taxonomy, bio_cot)"
            )
        return protocol

    def scorer(self, protocol: QuestionProtocol) -> Any:
        """The tuned model as an `HFAnswerer` (letter logits, shared-prefix cache) asking questions
        as `protocol` puts them (the taxonomy condition on its run-wide cached prefix): the same
        answerer `hiertrain test` uses, so validation reads the data's protocol, never a default."""
        if protocol not in self._scorers:
            from hiertrain.answerers.hf import HFAnswerer, HFSettings
            from hiertrain.vlm.global_prefix import GlobalPrefixAnswerer
            from hiertrain.vlm.prefix_cache import SharedPrefixAnswerer

            kind = GlobalPrefixAnswerer if self.scorable(protocol).condition_class.run_wide_prefix else SharedPrefixAnswerer
            engine = kind(self.hf_model, self.processor)
            self._scorers[protocol] = HFAnswerer(engine, self.processor, protocol, HFSettings(answer="logits"))
        return self._scorers[protocol]

    def answer(self, items: list[dict[str, Any]], protocol: QuestionProtocol) -> list[Any]:
        """SamplePredictions for dataset items (asked under `protocol`), in eval mode, without gradients."""
        was_training = self.model.training
        self.model.eval()
        try:
            return self.scorer(protocol).answer(items)
        finally:
            self.model.train(was_training)

    # ------------------------------------------------------------------ training

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        if inputs["input_ids"].numel() == 0:
            raise HierError(f"training batch {batch_idx} has no readable sample (all images skipped)")
        out = self.model(**inputs)
        size = inputs["input_ids"].shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=size)
        if batch.get("skipped"):
            self.log("train/skipped", float(batch["skipped"]), reduce_fx="sum", batch_size=1)
        return out.loss

    def configure_optimizers(self) -> dict[str, Any]:
        from transformers import get_cosine_schedule_with_warmup

        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = math.ceil(self.hparams.warmup_ratio * total)
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ validation

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        """Training batches are tensors; evaluation items (PIL images, records) stay as they are."""
        if isinstance(batch, dict):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        return batch

    def validation_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        from hiertrain.modules.evaluation_loop import score_batch

        answer = lambda good: self.answer(good, self.val_protocol)  # noqa: E731
        scored = score_batch(batch, answer, metrics=self.val_metrics, depth=self.val_depth, device=self.device)
        if scored.skipped:
            self.log("val/skipped", float(len(scored.skipped)), reduce_fx="sum", batch_size=1, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()  # integer states summed over ranks: exact under DDP
        self.val_metrics.reset()
        for name, value in values.items():
            if value.ndim == 0:
                # equal on every rank already; NaN (nothing counted) is logged as NaN
                self.log(f"val/{name}", value.float(), prog_bar=name == "hca", sync_dist=False, rank_zero_only=False)

    # ------------------------------------------------------------------ checkpoints

    def _trainable_keys(self) -> set[str]:
        return {f"model.{name}" for name, p in self.model.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keys = self._trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.configure_model()
        missing = self._trainable_keys() - set(checkpoint["state_dict"])
        if missing:
            raise HierError(f"checkpoint lacks {len(missing)} LoRA weights of this model (first: {sorted(missing)[0]})")

    def on_fit_end(self) -> None:
        self.finalize_adapter()

    def finalize_adapter(self) -> Path:
        """Load the best checkpoint's LoRA weights (by the monitored metric; else keep the last
        ones) and export them as a PEFT adapter. Idempotent: callbacks may call it first."""
        if self.exported_adapter is not None:
            return self.exported_adapter
        callback = self.trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        if self.hparams.export == "last":
            best = ""  # the final weights in memory (the paper's); the best checkpoint stays on disk
        self.adapter_choice = f"best: {best}" if best else "last weights"
        if best:
            state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
            missing = self._trainable_keys() - set(state)
            if missing:
                raise HierError(f"{best}: lacks {len(missing)} LoRA weights (first: {sorted(missing)[0]})")
            self.load_state_dict(state, strict=False)
            rank_zero_info(f"LoRA: best checkpoint {best} ({callback.monitor}={callback.best_model_score})")
        root = Path(callback.dirpath) if callback is not None and callback.dirpath else Path(self.trainer.default_root_dir)
        out = Path(self.hparams.adapter_dir) if self.hparams.adapter_dir else root / ADAPTER_DIRNAME
        if self.trainer.is_global_zero:
            save_adapter(self.model, self.processor, out, source=best or "last weights")
        self.trainer.strategy.barrier("hiertrain-adapter-written")
        self.exported_adapter = out
        return out


def frozen_parts(model: Any) -> dict[str, Any]:
    """The parts LoRA must leave alone: vision tower and projector (none for a plain LLM)."""
    from hiertrain.vlm.family import family_of

    family = family_of(model)
    if family.text_only:
        return {}
    return {"vision tower": family.vision_tower(model), "projector": family.projector(model)}


def save_adapter(peft_model: Any, processor: Any, out: str | Path, source: str = "") -> Path:
    """PEFT adapter (adapter_config.json + adapter_model.safetensors) and the processor."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "hiertrain_adapter.json").write_text(json.dumps({"source": source}) + "\n")
    return out


def load_adapter(model: Any, adapter: str | Path, is_trainable: bool = False) -> Any:
    """`PeftModel.from_pretrained`, then check every saved LoRA tensor really is in the model.

    PEFT only warns when keys do not match (e.g. after a transformers renaming of module
    paths), leaving zero-initialised adapters that silently reproduce the base model.
    """
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    adapter = Path(adapter)
    weights = adapter / "adapter_model.safetensors"
    if not (adapter / "adapter_config.json").is_file() or not weights.is_file():
        raise HierError(f"{adapter}: not a PEFT adapter (needs adapter_config.json and adapter_model.safetensors)")
    peft_model = PeftModel.from_pretrained(model, str(adapter), is_trainable=is_trainable)
    saved = load_file(str(weights))
    loaded = get_peft_model_state_dict(peft_model)
    missing = sorted(set(saved) - set(loaded))
    if missing or not saved:
        raise HierError(f"{adapter}: {len(missing)} of {len(saved)} adapter tensors match no module (first: {missing[:1]})")
    for key, value in saved.items():
        if not torch.equal(loaded[key].to(value.dtype).cpu(), value):
            raise HierError(f"{adapter}: adapter tensor {key} did not load (model holds other values)")
    return peft_model


def merge_adapter(adapter: str | Path, out: str | Path, base: str | None = None, dtype: str = "auto") -> Path:
    """Base model + adapter -> a merged transformers checkpoint with the processor in `out`."""
    from peft import PeftConfig

    from hiertrain.vlm.loading import load_vllm

    adapter, out = Path(adapter), Path(out)
    if not (adapter / "adapter_config.json").is_file():
        raise HierError(f"{adapter}: not a PEFT adapter (no adapter_config.json)")
    if out.exists() and any(out.iterdir()):
        raise HierError(f"{out}: output directory exists and is not empty")
    base = base or PeftConfig.from_pretrained(str(adapter)).base_model_name_or_path
    if not base:
        raise HierError(f"{adapter}: adapter_config.json names no base model; pass --base")
    model, processor = load_vllm(base, dtype, "sdpa")
    merged = load_adapter(model, adapter).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    if (adapter / "tokenizer_config.json").is_file() or (adapter / "processor_config.json").is_file():
        from transformers import AutoProcessor, AutoTokenizer

        auto = AutoProcessor if getattr(processor, "image_processor", None) is not None else AutoTokenizer
        processor = auto.from_pretrained(str(adapter))
    processor.save_pretrained(out)
    return out
