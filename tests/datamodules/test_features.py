"""FeatureDataModule: seeded val carve-out, class sets over all splits, unseen test classes, DDP padding."""

from __future__ import annotations

import pytest
import torch

from hiertrain.datamodules.features import FeatureDataModule
from hiertrain.datamodules.sampling import PaddedEvalSampler
from hiertrain.base.errors import HierError
from hiertrain.features.feature_store import ShardWriter, StoreLayout

# leaf -> path; "zeta" (genus Z, family F2) only occurs in test
PATHS = {
    "alpha": ["F1", "A", "alpha"],
    "beta": ["F1", "B", "beta"],
    "gamma": ["F2", "C", "gamma"],
    "zeta": ["F2", "Z", "zeta"],
}


def _store(root, splits: dict[str, list[str]], mode: str = "image", shard_rows: int = 7):
    slots = 1 if mode == "image" else 2
    layout = StoreLayout(
        mode=mode,
        sites=["vision", "llm.0"],
        dims=[2, 4],
        pools=["avg"],
        prompts=[f"p{i}" for i in range(slots)],
        level_names=["family", "genus", "species"],
        prompt_for_level=[0, 0, 0] if mode == "image" else [0, 1, -1],
    )
    w = ShardWriter(root, layout, shard_rows=shard_rows)
    sid = 0
    for split, leaves in splits.items():
        for leaf in leaves:
            levels = list(PATHS[leaf]) if mode == "image" else PATHS[leaf][:-1] + [None]
            rec = {"id": sid, "label": leaf, "split": split, "levels": levels}
            w.add([rec], {"avg": torch.full((1, *layout.row_shape), float(sid))})
            sid += 1
    w.flush()
    return root


def _ids(ds) -> list[int]:
    return [int(ds.__getitems__([i])["x"][0, 0, 1, 0]) for i in range(len(ds))]


def test_val_is_a_seeded_carve_out_of_train(tmp_path):
    root = _store(tmp_path, {"train": ["alpha", "beta", "gamma"] * 10, "test": ["alpha", "zeta"]})
    dm = FeatureDataModule(str(root), val_fraction=0.2, seed=3)
    dm.setup("fit")
    train, val, test = (_ids(dm.datasets[k]) for k in ("train", "val", "test"))
    assert len(val) == 6 and len(train) == 24
    assert sorted(train + val) == list(range(30)) and not set(train) & set(val)
    assert test == [30, 31]
    again = FeatureDataModule(str(root), val_fraction=0.2, seed=3)
    again.setup("fit")
    assert _ids(again.datasets["val"]) == val
    other = FeatureDataModule(str(root), val_fraction=0.2, seed=4)
    other.setup("fit")
    assert _ids(other.datasets["val"]) != val


def test_classes_are_the_union_and_unseen_test_classes_are_counted(tmp_path):
    root = _store(tmp_path, {"train": ["alpha", "beta", "gamma"] * 4, "val": ["beta"], "test": ["alpha", "zeta"]})
    dm = FeatureDataModule(str(root), val_split="val")
    dm.setup("fit")
    spec = dm.spec
    assert spec.classes == [["F1", "F2"], ["A", "B", "C", "Z"], ["alpha", "beta", "gamma", "zeta"]]
    assert spec.unseen_test_classes == [[], ["Z"], ["zeta"]]
    assert spec.split_sizes == {"train": 12, "val": 1, "test": 2}
    assert spec.dims == [2, 4] and spec.max_dim == 4
    y = dm.datasets["test"].__getitems__([0, 1])["y"]
    assert y.tolist() == [[0, 0, 0], [1, 3, 3]]


def test_text_store_does_not_probe_the_leaf(tmp_path):
    root = _store(tmp_path, {"train": ["alpha", "gamma"], "test": ["beta", "zeta"]}, mode="text")
    dm = FeatureDataModule(str(root), val_fraction=0.5, seed=0)
    dm.setup("fit")
    assert dm.spec.probed_levels == [0, 1] and dm.spec.slots == 2
    assert dm.spec.unseen_test_classes[1] == ["B", "Z"]
    assert (dm.datasets["test"].__getitems__([0, 1])["y"][:, 2] == -1).all()


def test_shuffled_labels_keep_paths_but_break_the_link(tmp_path):
    root = _store(tmp_path, {"train": ["alpha", "beta", "gamma"] * 10, "test": ["alpha", "zeta"]})
    plain = FeatureDataModule(str(root), seed=0)
    plain.setup("fit")
    shuf = FeatureDataModule(str(root), seed=0, shuffle_labels=True)
    shuf.setup("fit")
    y0 = plain.datasets["train"].targets
    y1 = shuf.datasets["train"].targets
    assert not torch.equal(y0, y1)
    valid_paths = {tuple(r) for r in torch.cat([y0, plain.datasets["val"].targets]).tolist()}
    assert {tuple(r) for r in y1.tolist()} <= valid_paths  # every row still a real path
    assert torch.equal(plain.datasets["test"].targets, shuf.datasets["test"].targets)


def test_eval_loader_under_two_ranks_sees_each_sample_once(tmp_path):
    root = _store(tmp_path, {"train": ["alpha"] * 6, "test": ["alpha", "beta", "gamma", "zeta", "beta"]}, shard_rows=2)
    dm = FeatureDataModule(str(root), batch_size=2)
    dm.setup("test")
    ds = dm.datasets["test"]
    seen = []
    for rank in (0, 1):
        loader = torch.utils.data.DataLoader(
            ds, batch_size=2, sampler=PaddedEvalSampler(ds, num_replicas=2, rank=rank), collate_fn=lambda b: b
        )
        for batch in loader:
            seen += [int(v) for v, ok in zip(batch["x"][:, 0, 1, 0], batch["valid"]) if ok]
    assert sorted(seen) == [6, 7, 8, 9, 10]
    assert isinstance(dm.test_dataloader().sampler, PaddedEvalSampler)


def test_bad_requests_name_the_store(tmp_path):
    root = _store(tmp_path, {"train": ["alpha"] * 3, "test": ["beta"]})
    with pytest.raises(HierError, match="pool 'last' not cached"):
        FeatureDataModule(str(root), pool="last").setup("fit")
    with pytest.raises(HierError, match="site 'llm.9' not cached"):
        FeatureDataModule(str(root), sites=["llm.9"]).setup("fit")
    with pytest.raises(HierError, match="need 'train' and 'val' samples"):
        FeatureDataModule(str(root), test_split="val").setup("fit")


def test_preloaded_splits_serve_the_same_batches_as_memory_mapped_ones(tmp_path):
    root = _store(tmp_path, {"train": ["alpha", "beta", "gamma"] * 4, "val": ["beta"], "test": ["alpha", "zeta", "beta"]}, shard_rows=5)
    mapped = FeatureDataModule(str(root), val_split="val", preload_mb=0, num_workers=2)
    mapped.setup("fit")
    loaded = FeatureDataModule(str(root), val_split="val", num_workers=2)
    loaded.setup("fit")
    for name in ("train", "val", "test"):
        assert mapped.datasets[name].features is None
        assert loaded.datasets[name].features is not None and len(loaded.datasets[name].features) == len(loaded.datasets[name])
        idx = [len(loaded.datasets[name]) - 1, 0, len(loaded.datasets[name])]  # the last index is a padding repeat
        a, b = mapped.datasets[name].__getitems__(idx), loaded.datasets[name].__getitems__(idx)
        for key in ("x", "y", "valid"):
            assert torch.equal(a[key], b[key]), (name, key)
    assert loaded.train_dataloader().num_workers == 0  # rows already in memory: workers would only copy them
    assert mapped.train_dataloader().num_workers == 2
    epoch = [int(v) for batch in loaded.train_dataloader() for v in batch["x"][:, 0, 1, 0]]
    assert sorted(epoch) == sorted(_ids(mapped.datasets["train"]))  # each train row once per epoch


# ---- the paper's protocol options (probing/vlm_probing.py at c86f23a) ----------------------------


def test_test_selection_serves_the_test_rows_for_selection_and_refuses_a_silent_one(tmp_path):
    root = _store(tmp_path, {"train": ["alpha", "beta", "gamma"] * 10, "test": ["alpha", "zeta"]})
    dm = FeatureDataModule(str(root), selection="test")
    dm.setup("fit")
    assert _ids(dm.datasets["train"]) == list(range(30))  # no carve-out: all of train fits (vlm_probing.py:82-83)
    assert _ids(dm.datasets["val"]) == _ids(dm.datasets["test"]) == [30, 31]
    assert dm.spec.info["selection"].startswith("test: the paper's optimistic protocol")
    default = FeatureDataModule(str(root))
    default.setup("fit")
    assert default.spec.info["selection"].startswith("val: 0.1 of train")
    with pytest.raises(HierError, match="say selection: test"):
        FeatureDataModule(str(root), val_split="test")
    with pytest.raises(HierError, match="selection 'train'"):
        FeatureDataModule(str(root), selection="train")


def test_shuffle_false_keeps_the_file_order_every_epoch(tmp_path):
    root = _store(tmp_path, {"train": ["alpha", "beta", "gamma"] * 10, "test": ["alpha"]})

    def epoch_order(**kw) -> list[int]:
        dm = FeatureDataModule(str(root), batch_size=4, selection="test", **kw)
        dm.setup("fit")
        return [int(v) for b in dm.train_dataloader() for v in b["x"][:, 0, 1, 0]]

    assert epoch_order(shuffle=False) == list(range(30))  # vlm_probing.py:121-126: slices in file order
    assert sorted(epoch_order()) == list(range(30)) and epoch_order() != list(range(30))


INAT = {
    f"sp{k}": ["Plantae", f"P{k % 2}", f"C{k % 3}", f"O{k % 4}", f"F{k % 5}", f"G{k}", f"sp{k}"] for k in range(6)
}


def _inat_store(root, level_names=("kingdom", "phylum", "class", "order", "family", "genus", "species")):
    layout = StoreLayout("image", ["vision"], [2], ["avg"], ["p"], list(level_names), [0] * 7)
    w = ShardWriter(root, layout, shard_rows=50)
    for sid, (leaf, path) in enumerate(list(INAT.items()) * 2):
        w.add([{"id": sid, "label": leaf, "split": "train" if sid < 6 else "test", "levels": path}],
              {"avg": torch.zeros(1, *layout.row_shape)})
    w.flush()
    return root


def test_paper_inat_level_bug_trains_order_family_genus_on_phylum_class_order(tmp_path):
    root = _inat_store(tmp_path / "inat")
    names = ["kingdom", "phylum", "class", "order", "family", "genus", "species"]
    right = FeatureDataModule(str(root), selection="test")
    right.setup("fit")
    assert right.spec.info["trained_on"] == {n: n for n in names}
    assert right.spec.classes[3] == ["O0", "O1", "O2", "O3"]
    bug = FeatureDataModule(str(root), selection="test", paper_inat_level_bug=True)
    bug.setup("fit")
    assert bug.spec.info["trained_on"] == {**{n: n for n in names}, "order": "phylum", "family": "class", "genus": "order"}
    assert bug.spec.classes[3] == bug.spec.classes[1] == ["P0", "P1"]  # "order" probe = phylum labels
    assert bug.spec.classes[4] == ["C0", "C1", "C2"] and bug.spec.classes[5] == ["O0", "O1", "O2", "O3"]
    assert bug.spec.classes[6] == right.spec.classes[6]  # species: index 6 is right
    cub = _store(tmp_path / "cub", {"train": ["alpha"], "test": ["beta"]})
    with pytest.raises(HierError, match="paper_inat_level_bug applies to iNat's levels"):
        FeatureDataModule(str(cub), paper_inat_level_bug=True).setup("fit")
