"""Probing through the `hiertrain predict|fit` CLI, as the demo and a user run it.

Tests build one config (the shape of configs/probing/synth_*.yaml) and hand it to the
LightningCLI entry point in-process; there is no second, Python-only wiring of the Trainer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hiertrain.cli.lightning import run_lightning_cli


def _run(subcommand: str, config: dict[str, Any], where: Path) -> Any:
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{subcommand}-config.yaml"
    config["trainer"].setdefault("default_root_dir", str(where))  # Lightning's outputs (config.yaml) beside it, not in ./runs
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return run_lightning_cli([subcommand, "--config", str(path), "--wandb=false"])


def extract_features(
    pretrained: str,
    store: str | Path,
    mode: str = "image",
    images: str | None = None,
    taxonomy: str | None = None,
    train_taxonomy: str | None = None,
    test_taxonomy: str | None = None,
    level_names: list[str] | None = None,
    label_in_text: bool = False,
    pools: list[str] | None = None,
    dtype: str = "float32",
    store_dtype: str = "float32",
    batch_size: int = 8,
    max_shard_mb: float = 256.0,
    shard_rows: int | None = None,
    limit: int | None = None,
    accelerator: str = "cpu",
    devices: Any = 1,
    strategy: str = "auto",
    progress: bool = False,
) -> Path:
    """`hiertrain predict` with a FeatureExtractor + FeatureWriter config; returns the store."""
    store = Path(store)
    config = {
        "seed_everything": 0,
        "return_predictions": False,
        "model": {"class_path": "hiertrain.modules.feature_extractor.FeatureExtractor",
                  "init_args": {"pretrained": str(pretrained), "mode": mode, "pools": pools, "dtype": dtype}},
        "data": {"class_path": "hiertrain.datamodules.probe_inputs.ProbeInputDataModule",
                 "init_args": {"mode": mode, "images": images, "taxonomy": taxonomy, "train_taxonomy": train_taxonomy,
                               "test_taxonomy": test_taxonomy, "level_names": level_names,
                               "label_in_text": label_in_text, "limit": limit, "batch_size": batch_size}},
        "trainer": {"accelerator": accelerator, "devices": devices, "strategy": strategy, "logger": False,
                    "enable_progress_bar": progress, "enable_model_summary": False,
                    "callbacks": [{"class_path": "hiertrain.callbacks.feature_writer.FeatureWriter",
                                   "init_args": {"output_dir": str(store), "dtype": store_dtype,
                                                 "shard_rows": shard_rows, "max_shard_mb": max_shard_mb}}]},
    }
    _run("predict", config, store.parent / f".{store.name}-config")
    return store


def train_probes(
    store: str | Path,
    out_dir: str | Path,
    pool: str = "avg",
    sites: list[str] | None = None,
    val_split: str | None = None,
    val_fraction: float = 0.1,
    shuffle_labels: bool = False,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    mlp_hidden: int | None = None,
    max_epochs: int = 100,
    patience: int = 10,
    batch_size: int = 512,
    seed: int = 0,
    accelerator: str = "cpu",
    devices: Any = 1,
    progress: bool = False,
    model_args: dict[str, Any] | None = None,
    data_args: dict[str, Any] | None = None,
    early_stopping: bool = True,
) -> dict[str, Any]:
    """`hiertrain fit` with the synth_probes.yaml shape (fit, then validate + test once on
    last.ckpt); returns the probes.json report."""
    out_dir = Path(out_dir)
    config = {
        "seed_everything": seed,
        "model": {"class_path": "hiertrain.modules.linear_probes.LinearProbes",
                  "init_args": {"lr": lr, "weight_decay": weight_decay, "mlp_hidden": mlp_hidden, "seed": seed,
                                "output_dir": str(out_dir), **(model_args or {})}},
        "data": {"class_path": "hiertrain.datamodules.features.FeatureDataModule",
                 "init_args": {"store": str(store), "pool": pool, "sites": sites, "val_split": val_split,
                               "val_fraction": val_fraction, "seed": seed, "shuffle_labels": shuffle_labels,
                               "batch_size": batch_size, **(data_args or {})}},
        "trainer": {"accelerator": accelerator, "devices": devices, "max_epochs": max_epochs, "logger": False,
                    "default_root_dir": str(out_dir), "enable_progress_bar": progress,
                    "enable_model_summary": False, "num_sanity_val_steps": 0, "deterministic": True,
                    "callbacks": [
                        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                         "init_args": {"dirpath": str(out_dir / "checkpoints"), "save_top_k": 0, "save_last": True,
                                       "enable_version_counter": False}},
                        *([{"class_path": "lightning.pytorch.callbacks.EarlyStopping",
                            "init_args": {"monitor": "val/selected_acc", "mode": "max", "patience": patience}}]
                          if early_stopping else [])]},
    }
    cli = _run("fit", config, out_dir / "config")
    return cli.model.report
