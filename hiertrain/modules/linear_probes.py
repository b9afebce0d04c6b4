"""LinearProbes: every (site x taxonomy level) probe trained at once from cached features.

One weight tensor ``[sites, dim, classes_total]`` holds all probes (the classes of every
probed level side by side), so a batch costs one einsum instead of sites x levels models.
Probes share no parameters, so summing their losses trains each exactly as if alone (Adam is
per-parameter). Features pass a non-affine BatchNorm first (as in MAE's linear probing):
hidden states differ in scale by orders of magnitude across layers, and with cumulative
statistics over frozen features it is just the train mean/std.

Model selection is per probe, on validation: after each validation epoch every probe whose
val accuracy improved copies its weights into a "selected" buffer (the paper picks a best
epoch per probe too, but on test). ``val/selected_acc`` (mean best val accuracy) is what
ModelCheckpoint and EarlyStopping monitor; validate/test stages evaluate the selected probes.
Metrics are the evaluation torchmetrics (per-level accuracy and HCA, per site), exact under DDP.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics import MetricCollection

from hiertrain.datamodules.features import ProbeSpec
from hiertrain.errors import HierError
from hiertrain.metrics import HierarchicalConsistentAccuracy, PerLevelAccuracy


class LinearProbes(LightningModule):
    """Probes sized from the data module's `ProbeSpec` at setup; ``mlp_hidden`` makes them MLPs."""

    def __init__(
        self,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        mlp_hidden: int | None = None,
        normalize: bool = True,
        seed: int = 0,
        output_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec: ProbeSpec | None = None
        self.results: dict[str, dict] = {}
        self.checkpoint_epoch: int | None = None  # epoch of the checkpoint tested (model selection)

    # ---- construction -----------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if self.spec is None:
            dm = self.trainer.datamodule
            if dm is None or getattr(dm, "spec", None) is None:
                raise HierError("LinearProbes needs a FeatureDataModule (its spec sizes the probes)")
            self.build(dm.spec)

    def build(self, spec: ProbeSpec) -> None:
        """Create the weights for `spec`; seeded, so the same spec and seed give the same probes."""
        self.spec = spec
        s, d, slots = len(spec.sites), spec.max_dim, spec.slots
        self.levels = list(spec.probed_levels)
        sizes = [len(spec.classes[i]) for i in self.levels]
        if any(n < 1 for n in sizes):
            raise HierError("LinearProbes: a probed level has no classes")
        self.offsets = [0, *torch.tensor(sizes).cumsum(0).tolist()]
        total = self.offsets[-1]
        gen = torch.Generator().manual_seed(self.hparams.seed)
        h = self.hparams.mlp_hidden
        width = d if h is None else h
        self.norm = nn.BatchNorm1d(slots * s * d, affine=False, momentum=None) if self.hparams.normalize else None
        if h is not None:
            self.w1 = nn.Parameter(torch.randn(s, len(self.levels), d, h, generator=gen) / math.sqrt(d))
            self.b1 = nn.Parameter(torch.zeros(s, len(self.levels), h))
        self.weight = nn.Parameter(torch.randn(s, width, total, generator=gen) * 0.01)
        self.bias = nn.Parameter(torch.zeros(s, total))
        for name in self._probe_params():
            self.register_buffer(f"selected_{name}", getattr(self, name).detach().clone())
        self.register_buffer("best_val", torch.full((s, len(self.levels)), -1.0, dtype=torch.float64))
        n_levels = len(spec.level_names)
        self.metrics = nn.ModuleDict(
            {
                split: nn.ModuleList(
                    MetricCollection(
                        {"hca": HierarchicalConsistentAccuracy(), "accuracy": PerLevelAccuracy(n_levels)},
                        compute_groups=False,
                    )
                    for _ in spec.sites
                )
                for split in ("val", "test")
            }
        )

    def _probe_params(self) -> list[str]:
        return ["weight", "bias"] + (["w1", "b1"] if self.hparams.mlp_hidden is not None else [])

    def _select(self, acc: Tensor) -> None:
        """Copy into the selected buffers each probe whose val accuracy ``acc [sites, levels]`` improved."""
        better = acc.to(self.best_val) > self.best_val
        self.best_val = torch.where(better, acc.to(self.best_val), self.best_val)
        # expand the [site, level] decision to each parameter's layout
        cols = torch.repeat_interleave(better, torch.tensor(self.offsets).diff().to(better.device), dim=1)
        masks = {"weight": cols[:, None, :], "bias": cols}
        if self.hparams.mlp_hidden is not None:
            masks.update({"w1": better[:, :, None, None], "b1": better[:, :, None]})
        with torch.no_grad():
            for name, mask in masks.items():
                sel = getattr(self, f"selected_{name}")
                sel.copy_(torch.where(mask, getattr(self, name), sel))

    # ---- forward -------------------------------------------------------------------------------

    def forward(self, x: Tensor, selected: bool = False) -> list[Tensor]:
        """``x [B, slots, sites, dim]`` -> logits ``[B, sites, classes_i]`` per probed level.

        ``selected`` uses the per-probe best-on-validation weights instead of the current ones.
        """
        assert self.spec is not None, "call build() or run under a Trainer with a FeatureDataModule"
        p = {n: getattr(self, f"selected_{n}" if selected else n) for n in self._probe_params()}
        b = x.shape[0]
        if self.norm is not None:
            x = self.norm(x.reshape(b, -1)).reshape(x.shape)
        slot_of = [self.spec.prompt_for_level[i] for i in self.levels]
        if self.hparams.mlp_hidden is None and len(set(slot_of)) == 1:
            logits = torch.einsum("bsd,sdc->bsc", x[:, slot_of[0]], p["weight"]) + p["bias"]
            return [logits[..., a:z] for a, z in zip(self.offsets[:-1], self.offsets[1:])]
        out = []
        for j, slot in enumerate(slot_of):
            a, z = self.offsets[j], self.offsets[j + 1]
            feats = x[:, slot]
            if self.hparams.mlp_hidden is not None:
                feats = torch.relu(torch.einsum("bsd,sdh->bsh", feats, p["w1"][:, j]) + p["b1"][:, j])
            out.append(torch.einsum("bsd,sdc->bsc", feats, p["weight"][..., a:z]) + p["bias"][:, a:z])
        return out

    def _loss(self, logits: list[Tensor], y: Tensor) -> Tensor:
        """Sum over probes of each probe's mean cross-entropy (-1 targets are not probed)."""
        total = logits[0].new_zeros(())
        for j, level in enumerate(self.levels):
            target = y[:, level]
            n = (target >= 0).sum()
            if n == 0:
                continue
            per_site = target[:, None].expand(-1, logits[j].shape[1])
            total = total + F.cross_entropy(logits[j].transpose(1, 2), per_site, ignore_index=-1, reduction="sum") / n
        return total

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(self(batch["x"]), batch["y"])
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=batch["x"].shape[0])
        return loss

    def _evaluate(self, split: str, batch: dict[str, Tensor]) -> None:
        # while fitting, validation scores the current weights (to select); afterwards the selection
        logits = self(batch["x"], selected=self.trainer.state.fn != "fit")
        y, valid = batch["y"], batch["valid"]
        n_levels = len(self.spec.level_names)
        correct = torch.zeros((y.shape[0], len(self.spec.sites), n_levels), dtype=torch.bool, device=y.device)
        for j, level in enumerate(self.levels):
            correct[:, :, level] = logits[j].argmax(-1) == y[:, level, None]
        asked = y >= 0
        for s, collection in enumerate(self.metrics[split]):
            collection.update(correct[:, s], asked, valid=valid)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def _collect(self, split: str) -> dict[str, Any]:
        """Per site: accuracy per level (None = not probed) and HCA; then the metrics reset."""
        acc, hca = {}, {}
        self._last_acc = torch.full((len(self.spec.sites), len(self.levels)), -1.0, dtype=torch.float64)
        for si, (site, collection) in enumerate(zip(self.spec.sites, self.metrics[split])):
            values = collection.compute()
            levels = values["accuracy"].tolist()
            self._last_acc[si] = torch.tensor([levels[i] for i in self.levels]).nan_to_num(-1.0)
            acc[site] = [None if i not in self.levels or math.isnan(levels[i]) else levels[i] for i in range(len(levels))]
            hca[site] = None if math.isnan(float(values["hca"])) else float(values["hca"])
            collection.reset()
        probed = [a for site in acc.values() for a in site if a is not None]
        mean = sum(probed) / len(probed) if probed else float("nan")
        return {"accuracy": acc, "hca": hca, "mean_accuracy": mean}

    def on_validation_epoch_end(self) -> None:
        res = self._collect("val")
        self.results["val"] = res
        hcas = [v for v in res["hca"].values() if v is not None]
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self._select(self._last_acc)
        self.log("val/acc_mean", res["mean_accuracy"])
        self.log("val/hca_mean", sum(hcas) / max(1, len(hcas)))
        self.log("val/selected_acc", self.best_val.clamp(min=0).mean().float())

    def on_test_epoch_end(self) -> None:
        from hiertrain.probe_outputs import probe_report, write_probe_outputs

        self.results["test"] = self._collect("test")
        report = probe_report(self.spec, self.results, dict(self.hparams))
        report["checkpoint"] = {"path": self.trainer.ckpt_path, "epoch": self.checkpoint_epoch}
        out = self.hparams.output_dir or (self.trainer.log_dir if self.trainer.log_dir else self.trainer.default_root_dir)
        self.report = report
        if self.trainer.is_global_zero:
            write_probe_outputs(report, Path(out), loggers=self.trainer.loggers, seed=self.hparams.seed)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["probe_spec"] = self.spec.__dict__ if self.spec is not None else None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.checkpoint_epoch = checkpoint.get("epoch")
        spec = checkpoint.get("probe_spec")
        if self.spec is None and spec is not None:
            self.build(ProbeSpec(**spec))
