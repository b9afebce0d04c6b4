"""FeatureDataModule: batches of cached features and per-level class targets for `LinearProbes`.

Splits whose features fit in ``preload_mb`` (float32) are gathered once into one tensor per
split, on the trainer's device, so an epoch is a few index ops (probe training runs hundreds of
epochs over the same rows). Larger caches are read by memory map (batches gathered in one read
per shard, via the dataset's ``__getitems__``), so a cache larger than RAM still trains.
Splits: ``train`` minus a seeded validation carve-out (or a named ``val_split``) for model
selection; ``test`` is only served to `trainer.test`. A level's classes are the union over every split, so a test class that train
never shows is still a class; such classes are counted (``unseen_test_classes``) and reported.

The paper's protocol (probing/vlm_probing.py at c86f23a) is available as options, never the
default: ``selection: test`` (its best epoch per probe is picked on test, lines 163-173: an
optimistic figure), ``shuffle: false`` (its batches are the file's order, lines 121-126) and
``paper_inat_level_bug: true`` (its iNat level indices, lines 254-263; docs/probing.md).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from hiertrain.datamodules.sampling import PaddedEvalSampler, unpad_index
from hiertrain.base.errors import HierError
from hiertrain.features.feature_store import FeatureStore
from hiertrain.features.probe_spec import ProbeSpec

SELECTIONS = ("val", "test")
TEST_SELECTION_NOTE = (
    "test: the paper's optimistic protocol (best epoch per probe chosen on the test split, "
    "probing/vlm_probing.py:163-173); the test figures are not held out"
)
# The paper's iNat probes (vlm_probing.py:254-263, llm_probing.py:68-77): level name -> the index
# its code reads from the 7-rank path; "order"/"family"/"genus" read phylum/class/order.
PAPER_INAT_LEVEL_INDEX = {"kingdom": 0, "phylum": 1, "class": 2, "order": 1, "family": 2, "genus": 3, "species": 6}
INAT_LEVELS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


def label_levels(level_names: list[str], paper_inat_level_bug: bool, source: str = "store") -> list[int]:
    """Per probed level, the level index its targets are read from: itself, or with the paper's
    iNat defect the paper's index (refused unless the levels are iNat's seven ranks)."""
    if not paper_inat_level_bug:
        return list(range(len(level_names)))
    if [n.lower() for n in level_names] != list(INAT_LEVELS):
        raise HierError(
            f"{source}: paper_inat_level_bug applies to iNat's levels {list(INAT_LEVELS)} only, not {level_names}"
        )
    return [PAPER_INAT_LEVEL_INDEX[n.lower()] for n in level_names]


class FeatureRows(Dataset):
    """Rows of a store with targets ``[L]`` (-1 = level not probed for this sample).

    With ``padded`` (evaluation), indices come from `PaddedEvalSampler`: ``i >= len`` is a
    padding repeat of row ``i - len``, returned with ``valid = False``.
    """

    def __init__(self, store: FeatureStore, rows: list[tuple[int, int]], targets: torch.Tensor, pool: str, sites: list[int], max_dim: int) -> None:
        self.store, self.rows, self.targets = store, rows, targets
        self.pool, self.sites, self.max_dim = pool, sites, max_dim
        self.features: torch.Tensor | None = None  # all rows at once, after `preload`

    def __len__(self) -> int:
        return len(self.rows)

    def preload(self, device: torch.device | str = "cpu") -> None:
        """Gather every row once into ``features [n, P, S, D]`` (and targets) on `device`."""
        x = self.store.gather(self.rows, self.pool, self.sites)[..., : self.max_dim]
        self.features, self.targets = x.to(device), self.targets.to(device)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        real, valid = zip(*(unpad_index(i, len(self.rows)) for i in indices))
        if self.features is not None:
            idx = torch.tensor(real, device=self.features.device)
            x = self.features[idx]
        else:
            idx = list(real)
            x = self.store.gather([self.rows[i] for i in real], self.pool, self.sites)[..., : self.max_dim]
        return {"x": x, "y": self.targets[idx], "valid": torch.tensor(valid, device=x.device)}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.__getitems__([index])
        return {k: v[0] for k, v in item.items()}


def keep_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Collate for `FeatureRows.__getitems__`: the batch is already stacked."""
    return batch


class FeatureDataModule(LightningDataModule):
    """Cached features of one pooling (``avg`` or ``last``) at the chosen sites (default: all).

    ``preload_mb``: the most float32 feature megabytes (all splits) held in memory; 0 = always
    read by memory map. Preloaded splits need no loader workers, so ``num_workers`` then applies
    only to memory-mapped reads.
    """

    def __init__(
        self,
        store: str,
        pool: str = "avg",
        sites: list[str] | None = None,
        train_split: str = "train",
        test_split: str = "test",
        val_split: str | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        shuffle_labels: bool = False,
        batch_size: int = 512,
        num_workers: int = 0,
        preload_mb: float = 4096.0,
        selection: str = "val",
        shuffle: bool = True,
        paper_inat_level_bug: bool = False,
    ) -> None:
        super().__init__()
        if selection not in SELECTIONS:
            raise HierError(f"FeatureDataModule: selection {selection!r} is not one of {', '.join(SELECTIONS)}")
        if selection == "val" and val_split is not None and val_split == test_split:
            raise HierError(
                f"FeatureDataModule: val_split {val_split!r} is the test split; say selection: test "
                "(the paper's optimistic protocol) to choose probes on test"
            )
        if selection == "val" and val_split is None and not 0.0 < val_fraction < 1.0:
            raise HierError(f"FeatureDataModule: val_fraction must be in (0, 1), got {val_fraction}")
        self.store_dir = store
        self.pool = pool
        self.site_names = sites
        self.train_split, self.test_split, self.val_split = train_split, test_split, val_split
        self.val_fraction, self.seed = val_fraction, seed
        self.shuffle_labels = shuffle_labels
        self.batch_size, self.num_workers = batch_size, num_workers
        self.preload_mb = preload_mb
        self.selection, self.shuffle, self.paper_inat_level_bug = selection, shuffle, paper_inat_level_bug
        self.spec: ProbeSpec | None = None
        self.datasets: dict[str, FeatureRows] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.spec is not None:
            return
        store = FeatureStore(self.store_dir)
        layout = store.layout
        names, site_idx = self._sites(store)
        dims = [layout.dims[i] for i in site_idx]
        index = store.index
        if not index:
            raise HierError(f"{store.root}: the feature store is empty")
        n_levels = len(layout.level_names)
        probed = [i for i in range(n_levels) if layout.prompt_for_level[i] >= 0]
        source = label_levels(list(layout.level_names), self.paper_inat_level_bug, str(store.root))
        labels = [[rec["levels"][k] if k < len(rec["levels"]) else None for k in source] for _, _, rec in index]
        classes, targets = _class_targets(labels, probed, n_levels)

        gen = torch.Generator().manual_seed(self.seed)
        train, val, test = self._split_rows(store, [rec["split"] for _, _, rec in index], gen)
        if self.shuffle_labels:
            # control: targets of train/val rows permuted among themselves (whole paths, so each
            # stays a consistent hierarchy); test keeps the truth, so accuracy should fall to chance
            fit_rows = torch.tensor(train + (val if self.selection == "val" else []))
            targets[fit_rows] = targets[fit_rows[torch.randperm(len(fit_rows), generator=gen)]]

        rows = [(shard, row) for shard, row, _ in index]
        max_dim = max(dims)

        def subset(rs: list[int]) -> FeatureRows:
            return FeatureRows(store, [rows[r] for r in rs], targets[rs], self.pool, site_idx, max_dim)

        self.datasets = {"train": subset(train), "val": subset(val), "test": subset(test)}
        self._preload(len(index) * layout.row_shape[0] * len(site_idx) * max_dim * 4 / 2**20)
        self.spec = ProbeSpec(
            sites=list(names),
            dims=dims,
            slots=layout.row_shape[0],
            level_names=list(layout.level_names),
            classes=classes,
            prompt_for_level=list(layout.prompt_for_level),
            probed_levels=probed,
            unseen_test_classes=_unseen_test_classes(labels, train, test, probed, n_levels),
            split_sizes={k: len(v) for k, v in self.datasets.items()},
            info={
                "store": str(store.root),
                "pool": self.pool,
                "mode": layout.mode,
                "shuffle_labels": self.shuffle_labels,
                "val": self._val_description(),
                "selection": TEST_SELECTION_NOTE if self.selection == "test" else f"val: {self._val_description()}",
                "train_order": "shuffled each epoch (seed %d)" % self.seed if self.shuffle else "file order (the paper's)",
                "paper_inat_level_bug": self.paper_inat_level_bug,
                "trained_on": {name: layout.level_names[k] for name, k in zip(layout.level_names, source)},
                **layout.info,
            },
        )

    def _val_description(self) -> str:
        if self.selection == "test":
            return f"the {self.test_split} split (selection: test)"
        return self.val_split or f"{self.val_fraction:g} of {self.train_split} (seed {self.seed})"

    def _sites(self, store: FeatureStore) -> tuple[list[str], list[int]]:
        """The probed site names and their positions in the store (pool and sites checked)."""
        layout = store.layout
        if self.pool not in layout.pools:
            raise HierError(f"{store.root}: pool '{self.pool}' not cached (have {', '.join(layout.pools)})")
        names = self.site_names or layout.sites
        unknown = [s for s in names if s not in layout.sites]
        if unknown:
            raise HierError(f"{store.root}: site '{unknown[0]}' not cached (have {', '.join(layout.sites)})")
        return list(names), [layout.sites.index(s) for s in names]

    def _split_rows(self, store: FeatureStore, splits: list[str], gen: torch.Generator) -> tuple[list[int], list[int], list[int]]:
        """Row numbers of train, val and test; val is carved from train when no val split is named."""
        train = [r for r, s in enumerate(splits) if s == self.train_split]
        test = [r for r, s in enumerate(splits) if s == self.test_split]
        if not train or not test:
            raise HierError(
                f"{store.root}: need '{self.train_split}' and '{self.test_split}' samples "
                f"(found {len(train)} and {len(test)})"
            )
        if self.selection == "test":  # the paper's: all of train fits, the test rows select
            return train, list(test), test
        if self.val_split is None:
            perm = torch.randperm(len(train), generator=gen).tolist()
            n_val = max(1, round(len(train) * self.val_fraction))
            return sorted(train[i] for i in perm[n_val:]), sorted(train[i] for i in perm[:n_val]), test
        val = [r for r, s in enumerate(splits) if s == self.val_split]
        if not val:
            raise HierError(f"{store.root}: no samples in val_split '{self.val_split}'")
        return train, val, test

    def _preload(self, megabytes: float) -> None:
        """Gather every split into memory on the trainer's device when the float32 rows fit."""
        if megabytes > self.preload_mb:
            return
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        for ds in self.datasets.values():
            ds.preload(device)

    def _loader(self, name: str, train: bool) -> DataLoader:
        ds = self.datasets[name]
        workers = 0 if ds.features is not None else self.num_workers
        common: dict[str, Any] = {
            "batch_size": self.batch_size,
            "num_workers": workers,
            "collate_fn": keep_batch,
            "persistent_workers": workers > 0,
        }
        if train and self.shuffle:
            gen = torch.Generator().manual_seed(self.seed)
            return DataLoader(ds, shuffle=True, generator=gen, **common)
        if train:  # the paper's order: rows as the store holds them (sample-id = file order)
            return DataLoader(ds, shuffle=False, **common)
        return DataLoader(ds, sampler=PaddedEvalSampler(ds), **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


def _class_targets(labels: list[list[str | None]], probed: list[int], n_levels: int) -> tuple[list[list[str]], torch.Tensor]:
    """Per level the sorted classes (union over splits) and the [rows, levels] class index
    targets (-1 where a level is not probed or a row has no label there)."""
    classes = [sorted({lab[i] for lab in labels if lab[i] is not None}) for i in range(n_levels)]
    lookup = [{c: k for k, c in enumerate(cs)} for cs in classes]
    targets = torch.full((len(labels), n_levels), -1, dtype=torch.long)
    for r, lab in enumerate(labels):
        for i in probed:
            if lab[i] is not None:
                targets[r, i] = lookup[i][lab[i]]
    return classes, targets


def _unseen_test_classes(labels: list[list[str | None]], train: list[int], test: list[int], probed: list[int], n_levels: int) -> list[list[str]]:
    """Per level the test classes no train row has (leaf-disjoint splits): reported, never hidden."""
    seen = [{labels[r][i] for r in train} for i in range(n_levels)]
    return [
        sorted({labels[r][i] for r in test if labels[r][i] is not None} - seen[i]) if i in probed else []
        for i in range(n_levels)
    ]
