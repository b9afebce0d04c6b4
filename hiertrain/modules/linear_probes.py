"""LinearProbes: every (site x taxonomy level) probe trained at once from cached features.

One weight tensor ``[sites, dim, classes_total]`` holds all probes (the classes of every
probed level side by side), so a batch costs one einsum instead of sites x levels models.
Probes share no parameters, so summing their losses trains each exactly as if alone (Adam is
per-parameter). Features are standardised first with the train split's per-feature mean and
std, computed once when fit starts (MAE's linear probing uses a non-affine BatchNorm for this:
hidden states differ in scale by orders of magnitude across layers). Fixed statistics, unlike
BatchNorm's running ones, keep a probe selected at epoch k scoring exactly what it scored then.

Model selection is per probe, on validation: after each validation epoch every probe whose
val accuracy improved copies its weights into a "selected" buffer (the paper picks a best
epoch per probe too, but on test). The selection lives in the weights, so the final state is
the selected model: one checkpoint written when fit ends (``ModelCheckpoint(save_last=True,
save_top_k=0)``) is all that is needed, not a file per improving epoch. ``val/selected_acc``
(mean best val accuracy) is what EarlyStopping monitors; validate/test stages evaluate the
selected probes. Scores of every site come from one `hiertrain.metrics.classes.ProbeAccuracy`
metric (integer counts, summed across processes, so exact under DDP) computed by the
evaluation metrics' functions for per-level accuracy and HCA; one update per batch keeps
validation cheap with 100+ probes.

The paper's probe (probing/vlm_probing.py:106-111, llm_probing.py:147-152 at c86f23a) is one
`nn.Linear` per level with its default init, Adam lr 1e-4 and no weight decay, on raw features:
``optimizer: adam``, ``init: torch_default``, ``normalize: false`` reproduce it (configs/paper/probing/;
docs/probing.md has the table). Defaults stay hiertrain's: AdamW, small random init, standardised.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from hiertrain.base.errors import HierError
from hiertrain.metrics.classes import ProbeAccuracy
from hiertrain.features.probe_spec import ProbeSpec

OPTIMIZERS = ("adamw", "adam")
INITS = ("scaled_randn", "torch_default")


class LinearProbes(LightningModule):
    """Probes sized from the data module's `ProbeSpec` at setup; ``mlp_hidden`` makes them MLPs.

    ``test_after_fit`` asks `hiertrain fit` (HierCLI) to test the fitted checkpoint once right
    away, so one command writes probes.json.
    ``optimizer``: "adamw" (default; decoupled ``weight_decay``) or "adam" (the paper's
    `torch.optim.Adam`, L2 ``weight_decay``; the paper uses 0). ``init``: "scaled_randn"
    (default: weights randn x 0.01, zero bias) or "torch_default" (what `nn.Linear` draws:
    weight and bias uniform in +-1/sqrt(fan_in), fan_in = the site's own width; the paper's).
    """

    def __init__(
        self,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        mlp_hidden: int | None = None,
        normalize: bool = True,
        seed: int = 0,
        output_dir: str | None = None,
        test_after_fit: bool = True,
        optimizer: str = "adamw",
        init: str = "scaled_randn",
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise HierError(f"LinearProbes: optimizer {optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if init not in INITS:
            raise HierError(f"LinearProbes: init {init!r} is not one of {', '.join(INITS)}")
        self.save_hyperparameters()
        self.spec: ProbeSpec | None = None
        self.results: dict[str, dict] = {}
        self.checkpoint_epoch: int | None = None  # epochs trained into the tested checkpoint

    @property
    def test_after_fit(self) -> bool:
        """Read by HierCLI.after_fit: `hiertrain fit` also writes probes.json."""
        return bool(self.hparams.test_after_fit)

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
        # per-feature train mean / std (`fit_normalizer`); identity until then
        self.register_buffer("feature_mean", torch.zeros(slots, s, d))
        self.register_buffer("feature_std", torch.ones(slots, s, d))
        if self.hparams.init == "torch_default":
            self._torch_default_init(spec, total, gen)
        else:
            if h is not None:
                self.w1 = nn.Parameter(torch.randn(s, len(self.levels), d, h, generator=gen) / math.sqrt(d))
                self.b1 = nn.Parameter(torch.zeros(s, len(self.levels), h))
            self.weight = nn.Parameter(torch.randn(s, width, total, generator=gen) * 0.01)
            self.bias = nn.Parameter(torch.zeros(s, total))
        for name in self._probe_params():
            self.register_buffer(f"selected_{name}", getattr(self, name).detach().clone())
        self.register_buffer("best_val", torch.full((s, len(self.levels)), -1.0, dtype=torch.float64))
        self.metrics = nn.ModuleDict({split: ProbeAccuracy(s, len(spec.level_names)) for split in ("val", "test")})

    def _torch_default_init(self, spec: ProbeSpec, total: int, gen: torch.Generator) -> None:
        """`nn.Linear`'s own init (kaiming_uniform a=sqrt(5) = uniform +-1/sqrt(fan_in), bias the
        same bound), per site with fan_in = that site's width; padded input rows stay zero."""
        s, d, h = len(spec.sites), spec.max_dim, self.hparams.mlp_hidden
        fan = torch.tensor(spec.dims, dtype=torch.float32)
        live = (torch.arange(d)[None, :] < fan[:, None]).float()  # [s, d]: real (not padded) dims

        def uniform(shape: tuple[int, ...], bound: torch.Tensor) -> torch.Tensor:
            return (torch.rand(shape, generator=gen) * 2 - 1) * bound

        if h is None:
            bound = (1 / fan.sqrt())[:, None, None]
            self.weight = nn.Parameter(uniform((s, d, total), bound) * live[:, :, None])
            self.bias = nn.Parameter(uniform((s, total), bound[:, :, 0]))
            return
        n = len(self.levels)
        bound1 = (1 / fan.sqrt())[:, None, None, None]
        self.w1 = nn.Parameter(uniform((s, n, d, h), bound1) * live[:, None, :, None])
        self.b1 = nn.Parameter(uniform((s, n, h), bound1[..., 0]))
        bound2 = 1 / math.sqrt(h)
        self.weight = nn.Parameter(uniform((s, h, total), torch.tensor(bound2)))
        self.bias = nn.Parameter(uniform((s, total), torch.tensor(bound2)))

    def on_fit_start(self) -> None:
        if self.hparams.normalize:
            self.fit_normalizer(self.trainer.datamodule.train_dataloader())

    @torch.no_grad()
    def fit_normalizer(self, batches) -> None:
        """Set the feature mean / std from every train row (each rank reads them all: same values)."""
        total = square = None
        n = 0
        for batch in batches:
            x = batch["x"].to(self.feature_mean.device, torch.float64)
            total = x.sum(0) if total is None else total + x.sum(0)
            square = (x * x).sum(0) if square is None else square + (x * x).sum(0)
            n += x.shape[0]
        if n == 0:
            raise HierError("LinearProbes: the train split is empty")
        mean = total / n
        var = (square / n - mean * mean).clamp(min=0) * n / max(1, n - 1)
        self.feature_mean.copy_(mean)
        # zero-padded dims (sites narrower than the widest) and constant features stay finite
        self.feature_std.copy_((var + 1e-5).sqrt())

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
        if self.hparams.normalize:
            x = (x - self.feature_mean) / self.feature_std
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
            sites = logits[j].shape[1]
            # rows = (sample, site) pairs, classes last: log-softmax over a contiguous dim is far faster
            flat = logits[j].reshape(-1, logits[j].shape[-1])
            total = total + F.cross_entropy(flat, target.repeat_interleave(sites), ignore_index=-1, reduction="sum") / n
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
        self.metrics[split].update(correct, y >= 0, valid)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def _collect(self, split: str) -> dict[str, Any]:
        """Per site: accuracy per level (None = not probed) and HCA; then the metrics reset."""
        metric = self.metrics[split]
        acc_t, hca_t = metric.shaped(*metric.compute())
        metric.reset()
        self._last_acc = acc_t[:, self.levels].nan_to_num(-1.0)
        acc_rows, hca_list = acc_t.tolist(), hca_t.tolist()
        acc, hca = {}, {}
        for site, levels, h in zip(self.spec.sites, acc_rows, hca_list):
            acc[site] = [None if i not in self.levels or math.isnan(a) else a for i, a in enumerate(levels)]
            hca[site] = None if math.isnan(h) else h
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
        from hiertrain.runs.probe_outputs import probe_report, write_probe_outputs

        self.results["test"] = self._collect("test")
        report = probe_report(self.spec, self.results, dict(self.hparams))
        report["checkpoint"] = {"path": self.trainer.ckpt_path, "epoch": self.checkpoint_epoch}
        out = self.hparams.output_dir or (self.trainer.log_dir if self.trainer.log_dir else self.trainer.default_root_dir)
        self.report = report
        if self.trainer.is_global_zero:
            write_probe_outputs(report, Path(out), loggers=self.trainer.loggers, seed=self.hparams.seed)

    def configure_optimizers(self):
        kind = torch.optim.Adam if self.hparams.optimizer == "adam" else torch.optim.AdamW
        return kind(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["probe_spec"] = self.spec.__dict__ if self.spec is not None else None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.checkpoint_epoch = checkpoint.get("epoch")
        spec = checkpoint.get("probe_spec")
        if self.spec is None and spec is not None:
            self.build(ProbeSpec(**spec))
