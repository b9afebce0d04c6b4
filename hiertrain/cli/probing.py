"""The probing study as two Python calls (what `make demo` and the benchmark use).

The same objects `hiertrain predict|fit|test --config configs/probing/*.yaml` builds, wired
with Lightning's own loops and callbacks: extraction = `Trainer.predict` with a
`FeatureWriter`; probes = `Trainer.fit` with EarlyStopping on the validation accuracy and one
checkpoint written when fit ends (`probe_checkpoint`: the per-probe selection lives in the
weights, so the final state is the selected model), then `validate` and `test` once on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning.pytorch.callbacks import ModelCheckpoint


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
    accelerator: str = "auto",
    devices: Any = 1,
    strategy: str = "auto",
    progress: bool = True,
) -> Path:
    """Cache per-site features of every sample into `store` (resumes an interrupted run)."""
    from lightning.pytorch import Trainer

    from hiertrain.datamodules.probe_inputs import ProbeInputDataModule
    from hiertrain.callbacks.feature_writer import FeatureWriter
    from hiertrain.modules.feature_extractor import FeatureExtractor

    model = FeatureExtractor(pretrained, mode=mode, pools=pools, dtype=dtype)
    data = ProbeInputDataModule(
        mode=mode,
        images=images,
        taxonomy=taxonomy,
        train_taxonomy=train_taxonomy,
        test_taxonomy=test_taxonomy,
        level_names=level_names,
        label_in_text=label_in_text,
        limit=limit,
        batch_size=batch_size,
    )
    writer = FeatureWriter(str(store), dtype=store_dtype, shard_rows=shard_rows, max_shard_mb=max_shard_mb)
    trainer = Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        callbacks=[writer],
        logger=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
    )
    trainer.predict(model, datamodule=data, return_predictions=False)
    return Path(store)


def probe_checkpoint(dirpath: str | Path) -> "ModelCheckpoint":
    """ModelCheckpoint for LinearProbes: `last.ckpt` once, when fit ends (rewritten by a rerun)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    return ModelCheckpoint(dirpath=str(dirpath), save_top_k=0, save_last=True, enable_version_counter=False)


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
    accelerator: str = "auto",
    devices: Any = 1,
    logger: Any = False,
    progress: bool = True,
    callbacks: list | None = None,
) -> dict[str, Any]:
    """Fit all probes, select the epoch on validation, test once; returns the probes.json report.

    `callbacks` are added to the Trainer's (e.g. lightning's `Timer` for a per-stage breakdown).
    """
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.callbacks import EarlyStopping

    from hiertrain.datamodules.features import FeatureDataModule
    from hiertrain.modules.linear_probes import LinearProbes

    seed_everything(seed, workers=True, verbose=False)
    out_dir = Path(out_dir)
    data = FeatureDataModule(
        str(store),
        pool=pool,
        sites=sites,
        val_split=val_split,
        val_fraction=val_fraction,
        seed=seed,
        shuffle_labels=shuffle_labels,
        batch_size=batch_size,
    )
    model = LinearProbes(lr=lr, weight_decay=weight_decay, mlp_hidden=mlp_hidden, seed=seed, output_dir=str(out_dir))
    checkpoint = probe_checkpoint(out_dir / "checkpoints")
    stopping = EarlyStopping(monitor="val/selected_acc", mode="max", patience=patience)
    trainer = Trainer(
        accelerator=accelerator,
        devices=devices,
        max_epochs=max_epochs,
        callbacks=[checkpoint, stopping, *(callbacks or [])],
        logger=logger,
        default_root_dir=str(out_dir),
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    trainer.fit(model, datamodule=data)
    trainer.validate(model, datamodule=data, ckpt_path="last", verbose=False)
    trainer.test(model, datamodule=data, ckpt_path="last", verbose=False)
    return model.report
