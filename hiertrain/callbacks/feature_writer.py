"""FeatureWriter: the prediction-writer callback that turns `FeatureExtractor` outputs into shards.

Why a callback: Lightning's predict loop would otherwise keep every batch's features in memory
(``return_predictions``); here each batch goes straight into a bounded shard buffer, padding
repeats from `PaddedEvalSampler` are dropped, each DDP rank writes its own shards, and samples
already in the store are excluded before the loader is built (resume).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter

from hiertrain.base.errors import HierError
from hiertrain.features.feature_store import FeatureStore, ShardWriter, StoreLayout

log = logging.getLogger(__name__)


class FeatureWriter(BasePredictionWriter):
    """Write pooled features to ``output_dir`` in shards of at most ``max_shard_mb`` (or ``shard_rows``)."""

    def __init__(
        self,
        output_dir: str,
        dtype: str = "float32",
        shard_rows: int | None = None,
        max_shard_mb: float = 256.0,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.dtype = dtype
        self.shard_rows = shard_rows
        self.max_shard_mb = max_shard_mb
        self.writer: ShardWriter | None = None
        self.skipped_done = 0
        self.dropped_padding = 0
        self.skipped_images = 0  # unreadable images (each named on stderr when met)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "predict":
            return
        trainer.predict_loop.return_predictions = False  # features live on disk, not in a list
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "describe") or not hasattr(pl_module, "store_fields"):
            raise HierError("FeatureWriter needs a FeatureExtractor model and a ProbeInputDataModule")
        fields = pl_module.store_fields()
        desc = dm.describe()
        layout = StoreLayout(
            mode=fields["mode"],
            sites=fields["sites"],
            dims=fields["dims"],
            pools=fields["pools"],
            prompts=fields.get("prompts", desc["prompts"]),
            level_names=desc["level_names"],
            prompt_for_level=desc["prompt_for_level"],
            dtype=self.dtype,
            info={k: fields[k] for k in ("model", "weights", "settings", "system") if k in fields} | desc["info"],
        )
        if getattr(dm, "mode", fields["mode"]) != fields["mode"]:
            raise HierError(f"FeatureWriter: data module mode '{dm.mode}' differs from model mode '{fields['mode']}'")
        self.writer = ShardWriter(
            self.output_dir, layout, rank=trainer.global_rank, shard_rows=self.shard_rows, max_shard_mb=self.max_shard_mb
        )
        done = FeatureStore(self.output_dir).done_ids()
        self.skipped_done = sum(1 for r in dm.records if int(r["id"]) in done)
        dm.exclude_ids = done

    def write_on_batch_end(
        self, trainer, pl_module, prediction: dict[str, Any], batch_indices, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        assert self.writer is not None
        reasons = list(batch.get("skipped", []) if isinstance(batch, dict) else [])
        reasons += prediction.get("skipped", [])  # images the model's processor refused
        for reason in reasons:
            self.skipped_images += 1
            print(f"skipped: {reason}", file=sys.stderr, flush=True)
        valid = prediction["valid"].cpu().bool()
        keep = valid.nonzero().flatten()
        self.dropped_padding += int((~valid).sum())
        if len(keep) == 0:
            return
        records = [prediction["records"][i] for i in keep.tolist()]
        feats = {p: t[keep] for p, t in prediction["features"].items()}
        self.writer.add(records, feats)

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.writer is None:
            return
        self.writer.flush()
        msg = (
            f"rank {trainer.global_rank}: wrote {self.writer.written_rows} samples in "
            f"{len(self.writer.written_shards)} shards to {self.output_dir} "
            f"(already stored: {self.skipped_done}; padding repeats dropped: {self.dropped_padding}; "
            f"unreadable images skipped: {self.skipped_images})"
        )
        log.info(msg)
        print(msg)
