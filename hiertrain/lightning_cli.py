"""LightningCLI for `hiertrain fit|validate|test|predict --config ...`.

Any LightningModule / LightningDataModule importable by class path works
(`--model hiertrain.modules.VLLMEvaluator`, or `class_path:` in YAML), so a config per
experiment composes from `configs/models/*.yaml` + `configs/data/*.yaml`.
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


class HierCLI(LightningCLI):
    """LightningCLI with our defaults: no config file written into the run dir twice on resume."""


def run_lightning_cli(argv: list[str]) -> None:
    HierCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        save_config_kwargs={"overwrite": True},
    )
