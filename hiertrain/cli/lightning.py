"""LightningCLI for `hiertrain fit|validate|test|predict --config ...`.

Any LightningModule / LightningDataModule importable by class path works
(`class_path: hiertrain.modules.vllm_evaluator.VLLMEvaluator` in YAML), so a config per
experiment composes from `configs/models/*.yaml` + `configs/data/*.yaml`.

Logging: unless `--trainer.logger` is given, runs log to W&B (`WandbLogger`; project
`--wandb_project`, group = question set, name = run name, tags = model, dataset, mode, answer,
taxonomy), so runs of one taxonomy sit side by side. W&B never blocks or prompts: without
credentials (WANDB_API_KEY or `wandb login`) it logs offline and says so in one line;
`WANDB_MODE` is respected; `--wandb false` (or `WANDB_MODE=disabled`) logs to CSV instead.
Evaluations log a sample table (`--wandb_log_samples N` rows, hiertrain.modules.sample_table).

Outputs: `--trainer.default_root_dir` defaults to `runs/` (git-ignored), and a
`ModelCheckpoint` without `dirpath` writes to `<default_root_dir>/checkpoints`, so
`--ckpt_path last` only finds this run's checkpoints. `--fresh true` clears an evaluation's
run directory before it starts (a rerun with another identity is refused without it).

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

from hiertrain.base.atomic import file_error
from hiertrain.base.errors import HierError


def _logger_identity(model: Any, data: Any) -> dict[str, Any]:
    """W&B name/group/tags from an evaluator and its question data (empty for other modules):
    the same `RunMeta` the run directory is named by (`QuestionEvaluator.named_meta`)."""
    from hiertrain.runs.meta import RunMeta

    pretrained, questions = getattr(model, "pretrained", None), getattr(data, "questions", None)
    if pretrained is None or questions is None:
        return {}
    if hasattr(model, "named_meta"):  # an evaluator
        return model.named_meta(data).wandb_identity(getattr(data, "taxonomy_path", None))
    # a tuner: named by its class (its run directory is the trainer's root)
    meta = RunMeta.for_questions("eval", pretrained, data, type(model).__name__)
    meta.fields["run_name"] = getattr(model, "run_name", None)
    return meta.wandb_identity(getattr(data, "taxonomy_path", None))


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


DEFAULT_ROOT_DIR = "runs"


def wandb_credentials() -> bool:
    """Whether W&B has an API key (env or `wandb login`'s netrc entry), checked without wandb."""
    import netrc
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(wanted: bool) -> tuple[str, str | None]:
    """("online"|"offline"|"csv", the one line to print or None): never a login prompt."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if not wanted or mode == "disabled":
        return "csv", None
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        return "csv", "hiertrain: wandb is not installed: logging to CSV"
    if mode in ("offline", "dryrun"):
        return "offline", None
    if not wandb_credentials():
        if mode == "online":
            raise HierError("WANDB_MODE=online but no W&B credentials: run `wandb login` or set WANDB_API_KEY")
        return "offline", "hiertrain: no W&B credentials (WANDB_API_KEY or `wandb login`): logging offline (`wandb sync` uploads later)"
    return "online", None


class HierCLI(LightningCLI):
    """LightningCLI with our defaults: a W&B (or CSV) logger named after the run, outputs
    under `runs/`, checkpoints inside the run's root."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--wandb", type=bool, default=True, help="log to W&B; false = CSV logger")
        parser.add_argument("--wandb_project", type=str, default="hiertrain", help="W&B project")
        parser.add_argument(
            "--wandb_log_samples", type=int, default=50,
            help="evaluation: rows (images, first by id) of the W&B sample table; 0 = no table",
        )  # fmt: skip
        parser.add_argument(
            "--fresh", type=bool, default=False, help="evaluation: clear the run directory and start afresh"
        )
        parser.set_defaults({"trainer.default_root_dir": DEFAULT_ROOT_DIR})

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        root = kwargs.setdefault("default_root_dir", trainer_config.get("default_root_dir") or DEFAULT_ROOT_DIR)
        if trainer_config.get("logger") in (None, True) and "logger" not in kwargs:
            kwargs["logger"] = self._default_logger(root)
        trainer = super().instantiate_trainer(**kwargs)
        from lightning.pytorch.callbacks import ModelCheckpoint

        for callback in trainer.callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))
        if hasattr(self.model, "fresh"):
            self.model.fresh = bool(self._get(self.config_init, "fresh", default=False))
        if hasattr(self.model, "log_samples"):
            self.model.log_samples = int(self._get(self.config_init, "wandb_log_samples", default=50))
        return trainer

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
        mode, note = wandb_mode(bool(self._get(self.config_init, "wandb", default=True)))
        if note:
            print(note, file=sys.stderr, flush=True)
        if mode == "csv":
            # A rerun or resume of a named run continues its metrics.csv instead of deleting it; a
            # fresh start (--fresh, or a fit that does not resume a checkpoint) starts a new one.
            resumes = self.subcommand != "fit" or self._get(self.config_init, "ckpt_path", default=None) is not None
            if self._get(self.config_init, "fresh", default=False) or not resumes:
                return CSVLogger(save_dir=root, name="csv", version=identity.get("name"))
            from hiertrain.cli.csv_logger import KeepingCSVLogger

            return KeepingCSVLogger(save_dir=root, name="csv", version=identity.get("name"))
        project = self._get(self.config_init, "wandb_project", default="hiertrain")
        Path(root).mkdir(parents=True, exist_ok=True)
        return WandbLogger(
            save_dir=root, project=project, job_type=self.subcommand, offline=mode == "offline", **identity
        )


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
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        return _cli(argv)
    except SIGTERMException:
        # Lightning's own SIGTERM handling: the loop stops after the batch in flight and raises this
        # (a SystemExit with code 0). A preempted run is not a finished one: say so, exit non-zero.
        print(f"hiertrain: {interrupted_message(argv)}", file=sys.stderr, flush=True)
        raise SystemExit(SIGTERM_EXIT) from None
    except Exception as err:
        cause = _hier_cause(err)
        if cause is None:
            raise
        print(f"hiertrain: {cause}", file=sys.stderr)
        raise SystemExit(2) from None


SIGTERM_EXIT = 128 + 15  # what a shell reports for a process ended by SIGTERM


def interrupted_message(argv: list[str]) -> str:
    """The line for a run stopped by SIGTERM: everything finished is kept; how to go on."""
    how = "rerun with --ckpt_path last to resume" if argv and argv[0] == "fit" else "rerun the same command to resume"
    return f"interrupted by SIGTERM (finished work is kept); {how}"


def _hier_cause(err: BaseException | None) -> HierError | None:
    """The HierError behind `err`: jsonargparse wraps errors raised while it instantiates classes."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, HierError):
            return err
        if isinstance(err, OSError) and file_error(err) is not None:
            return file_error(err)
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
