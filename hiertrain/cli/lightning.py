"""LightningCLI for `hiertrain fit|validate|test|predict --config ...`.

Any LightningModule / LightningDataModule importable by class path works
(`class_path: hiertrain.modules.vllm_evaluator.VLLMEvaluator` in YAML), so a config per
experiment composes from `configs/models/*.yaml` + `configs/data/*.yaml`.

Logging: unless `--trainer.logger` is given, runs log to W&B (`WandbLogger`; project
`--wandb_project`, group = question set, name = run name, tags = model, dataset, mode, answer,
taxonomy), so runs of one taxonomy sit side by side. `WANDB_MODE=offline` works without a
network; `--wandb false` (or `WANDB_MODE=disabled`) logs to CSV instead.

A model with ``test_after_fit = True`` (LinearProbes) is validated and tested once on the
fitted checkpoint right after `fit`, so one command gives its report (`hiertrain test
--ckpt_path` still works alone). The config is saved into the run's log dir, never into the
working directory when no run directory was named (no logger, no default_root_dir).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from hiertrain.core.errors import HierError


def _logger_identity(model: Any, data: Any) -> dict[str, Any]:
    """W&B name/group/tags from an evaluator and its question data (empty for other modules)."""
    from hiertrain.runs.eval_outputs import default_run_name, model_name

    pretrained, questions = getattr(model, "pretrained", None), getattr(data, "questions", None)
    if pretrained is None or questions is None:
        return {}
    meta = {
        "model_name": model_name(pretrained),
        "dataset": getattr(data, "name", None) or Path(questions).stem,
        "mode": getattr(data, "mode", "image"),
        "answer": getattr(model, "answer_kind", type(model).__name__),
        "prompt_variant": getattr(data, "prompt_variant", 0),
    }
    tags = [meta["model_name"], meta["dataset"], meta["mode"], str(meta["answer"])]
    taxonomy = getattr(data, "taxonomy_path", None)
    if taxonomy:
        tags.append(Path(taxonomy).stem)
    name = getattr(model, "run_name", None) or default_run_name(meta)
    return {"name": name, "group": meta["dataset"], "tags": tags}


class RunDirConfigCallback(SaveConfigCallback):
    """SaveConfigCallback that skips saving when the log dir is only the working directory."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        named = self.config.get("trainer", {}).get("default_root_dir") is not None
        if not named and Path(trainer.log_dir or os.getcwd()).resolve() == Path.cwd().resolve():
            return
        super().setup(trainer, pl_module, stage)


def fitted_checkpoint(trainer: Trainer) -> str | None:
    """`ckpt_path` for evaluating what fit produced: "best" if tracked, else "last", else None (weights in memory)."""
    callback = trainer.checkpoint_callback
    if callback is not None and getattr(callback, "best_model_path", ""):
        return "best"
    if callback is not None and getattr(callback, "last_model_path", ""):
        return "last"
    return None


class HierCLI(LightningCLI):
    """LightningCLI with our defaults: a W&B (or CSV) logger named after the run."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--wandb", type=bool, default=True, help="log to W&B; false = CSV logger")
        parser.add_argument("--wandb_project", type=str, default="hiertrain", help="W&B project")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        if trainer_config.get("logger") in (None, True) and "logger" not in kwargs:
            kwargs["logger"] = self._default_logger(trainer_config.get("default_root_dir") or os.getcwd())
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        """Validate + test once on the fitted checkpoint when the model asks (``test_after_fit``)."""
        if not getattr(self.model, "test_after_fit", False) or self.trainer.interrupted:
            return
        ckpt = fitted_checkpoint(self.trainer)
        self.trainer.validate(self.model, datamodule=self.datamodule, ckpt_path=ckpt, verbose=False)
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt, verbose=False)

    def _default_logger(self, root: str):
        from lightning.pytorch.loggers import CSVLogger, WandbLogger

        identity = _logger_identity(self.model, self.datamodule)
        use_wandb = self._get(self.config_init, "wandb", default=True) and os.environ.get("WANDB_MODE") != "disabled"
        if not use_wandb:
            return CSVLogger(save_dir=root, name="csv", version=identity.get("name"))
        project = self._get(self.config_init, "wandb_project", default="hiertrain")
        return WandbLogger(save_dir=root, project=project, job_type=self.subcommand, **identity)


def _cli(argv: list[str]) -> HierCLI:
    return HierCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        save_config_callback=RunDirConfigCallback,
        save_config_kwargs={"overwrite": True},
    )


def run_lightning_cli(argv: list[str]) -> HierCLI:
    """The `hiertrain fit|validate|test|predict` entry: bad input exits 2 with one line."""
    # cli.main hands over sys.argv[1:] explicitly; Lightning would warn about "both".
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    try:
        return _cli(argv)
    except Exception as err:
        cause = _hier_cause(err)
        if cause is None:
            raise
        print(f"hiertrain: {cause}", file=sys.stderr)
        raise SystemExit(2) from None


def _hier_cause(err: BaseException | None) -> HierError | None:
    """The HierError behind `err`: jsonargparse wraps errors raised while it instantiates classes."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, HierError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
