"""configs/probing/*.yaml: every class and argument exists, the paper's configs point at the real
split files, and the synthetic demo runs end to end through `hiertrain predict|fit|test`."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs" / "probing").glob("*.yaml"))
PAPER = [p for p in CONFIGS if not p.name.startswith("synth_")]


def _cls(path: str):
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _check_init_args(node: dict) -> None:
    cls = _cls(node["class_path"])
    inspect.signature(cls).bind(**node.get("init_args", {}))  # TypeError on an unknown/missing arg


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_classes_and_arguments_exist(path):
    from lightning.pytorch import Trainer

    cfg = yaml.safe_load(path.read_text())
    _check_init_args(cfg["model"])
    _check_init_args(cfg["data"])
    trainer = dict(cfg["trainer"])
    for cb in trainer.pop("callbacks", []):
        _check_init_args(cb)
    logger = trainer.pop("logger", None)
    if isinstance(logger, dict):
        _check_init_args(logger)
    inspect.signature(Trainer).bind(**trainer)
    if cfg["model"]["class_path"].endswith("FeatureExtractor"):
        assert cfg["return_predictions"] is False  # features go to shards, not into memory
        assert cfg["model"]["init_args"]["mode"] == cfg["data"]["init_args"]["mode"]
    else:
        callbacks = {cb["class_path"].rsplit(".", 1)[1]: cb["init_args"] for cb in cfg["trainer"]["callbacks"]}
        monitors = {args.get("monitor") for args in callbacks.values()} - {None}
        assert monitors == {"val/selected_acc"}  # selection on validation, never on test
        # one checkpoint when fit ends (the selection is inside the weights), not one per epoch
        assert callbacks["ModelCheckpoint"]["save_top_k"] == 0 and callbacks["ModelCheckpoint"]["save_last"] is True
        assert cfg["trainer"]["default_root_dir"]  # LightningCLI's config.yaml lands in the run dir


def test_paper_configs_cover_both_datasets_and_sides():
    names = {p.name for p in PAPER}
    for ds in ("cub", "inat_plant"):
        for kind in ("extract_image", "extract_text", "probes_image", "probes_text"):
            assert f"{ds}_qwen7b_{kind}.yaml" in names
    for p in PAPER:
        cfg = yaml.safe_load(p.read_text())
        if "extract_text" in p.name:
            assert cfg["data"]["init_args"]["label_in_text"] is False  # leak-free default


@pytest.mark.parametrize("dataset,leaves", [("CUB200", (137, 63)), ("Inat21_Plant", (2508, 1763))])
def test_text_inputs_from_the_paper_splits(dataset, leaves):
    from hiertrain.datamodules.probe_inputs import ProbeInputDataModule

    cfg = yaml.safe_load((REPO / "configs/probing" / f"{'cub' if dataset == 'CUB200' else 'inat_plant'}_qwen7b_extract_text.yaml").read_text())
    args = dict(cfg["data"]["init_args"])
    assert all(args[key].startswith("hiertrain://") for key in ("train_taxonomy", "test_taxonomy"))  # packaged
    dm = ProbeInputDataModule(**args)
    dm.setup("predict")
    splits = [r["split"] for r in dm.records]
    assert (splits.count("train"), splits.count("test")) == leaves
    desc = dm.describe()
    depth = len(desc["level_names"])
    assert desc["prompt_for_level"] == list(range(depth - 1)) + [-1]
    assert all(len(p) == depth - 1 for p in dm._prompts)
    assert "Given the {leaf}, what is its taxonomic classification at the genus level?" in desc["prompts"]


def test_cub_image_config_reads_the_real_split_and_names_missing_images():
    from hiertrain.datamodules.probe_inputs import ProbeInputDataModule
    from hiertrain.base.errors import HierError

    cfg = yaml.safe_load((REPO / "configs/probing/cub_qwen7b_extract_image.yaml").read_text())
    args = dict(cfg["data"]["init_args"])
    args["image_root"] = "/nonexistent/cub"
    with pytest.raises(HierError, match=r"images_split.jsonl:1: image not found: /nonexistent/cub/001.Black_footed_Albatross/"):
        ProbeInputDataModule(**args).setup("predict")


def _local_copy(name: str, tmp: Path, tiny: Path, synth: Path) -> Path:
    text = (REPO / "configs/probing" / name).read_text()
    for arch in ("qwen2_5_vl", "llava_onevision"):
        text = text.replace(f"runs/demo/tiny/{arch}", str(tiny))
    text = text.replace("runs/demo/synth", str(synth))
    text = text.replace("runs/demo/probing", str(tmp / "probing"))
    out = tmp / name
    out.write_text(text)
    return out


def test_demo_configs_use_the_demo_layout():
    """`hiertrain demo` / configs/demo put tiny models under runs/demo/tiny/<arch>."""
    cfg = yaml.safe_load((REPO / "configs/probing/synth_extract_image.yaml").read_text())
    demo = yaml.safe_load((REPO / "configs/demo/qwen_image.yaml").read_text())
    assert cfg["model"]["init_args"]["pretrained"] == demo["model"]["init_args"]["pretrained"] == "runs/demo/tiny/qwen2_5_vl"


@pytest.mark.slow
def test_synthetic_demo_through_the_cli(tmp_path, tiny_qwen, synth_dir, monkeypatch):
    from hiertrain.cli.main import main

    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # nothing may be written here: every path of the configs is a run dir

    extract = _local_copy("synth_extract_image.yaml", tmp_path, tiny_qwen, synth_dir)
    probes = _local_copy("synth_probes.yaml", tmp_path, tiny_qwen, synth_dir)
    main(["predict", "--config", str(extract), "--data.init_args.limit", "12", "--trainer.enable_progress_bar", "false"])
    store = tmp_path / "probing" / "features_image"
    assert len(list(store.glob("shard-*.safetensors"))) >= 1
    # fit alone: one checkpoint, then validate + test on it -> probes.json without a second command
    main(["fit", "--config", str(probes), "--trainer.max_epochs", "3", "--trainer.enable_progress_bar", "false"])
    run = tmp_path / "probing" / "probes_image"
    ckpt = run / "checkpoints" / "last.ckpt"
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt"]
    after_fit = json.loads((run / "probes.json").read_text())
    assert after_fit["checkpoint"] == {"path": str(ckpt), "epoch": 3}
    assert after_fit["val"] is not None and after_fit["test"]["hca"].keys() == set(after_fit["sites"])
    assert (run / "config.yaml").is_file()
    (run / "probes.json").unlink()
    # the installed entry point, as a user runs it: re-testing the checkpoint gives the same report
    exe = Path(sys.executable).with_name("hiertrain")
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(exe), "test", "--config", str(probes), "--ckpt_path", str(ckpt), "--trainer.enable_progress_bar", "false"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((run / "probes.json").read_text())
    assert report["sites"] == ["vision", "projector", "llm.0", "llm.1", "llm.2"]
    assert report["checkpoint"]["path"] == str(ckpt)
    assert report["test"] == after_fit["test"]  # test touched once per command, same selected probes
    assert "probe test accuracy" in done.stdout
    # no run dir named (no logger, no default_root_dir): LightningCLI must not drop config.yaml in cwd;
    # everything goes under the git-ignored runs/ (issue 11, cases 10 and 11)
    main(["fit", "--config", str(probes), "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", "null", "--model.init_args.test_after_fit", "false"])  # fmt: skip
    assert [p.name for p in work.iterdir()] == ["runs"]
    assert (work / "runs" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_llava_onevision_image_features_extracted_and_probed(tmp_path, tiny_llava, synth_dir, monkeypatch):
    """The family adapter's new capability end to end: LLaVA-OneVision image features through
    `hiertrain predict` (FeatureWriter store), then `hiertrain fit` (FeatureDataModule ->
    LinearProbes, validated and tested on the fitted checkpoint) -> probes.json per site."""
    from hiertrain.cli.main import main
    from hiertrain.features.feature_store import FeatureStore

    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    extract = _local_copy("synth_extract_image_llava.yaml", tmp_path, tiny_llava, synth_dir)
    probes = _local_copy("synth_probes_llava.yaml", tmp_path, tiny_llava, synth_dir)
    main(["predict", "--config", str(extract), "--data.init_args.limit", "24", "--data.init_args.batch_size", "4",
          "--trainer.enable_progress_bar", "false"])  # fmt: skip
    store = FeatureStore(tmp_path / "probing" / "features_image_llava")
    sites = ["vision", "projector", "llm.0", "llm.1", "llm.2"]
    assert store.layout.mode == "image" and store.layout.sites == sites
    assert store.layout.dims == [32, 64, 64, 64, 64] and store.layout.pools == ["avg", "last"]
    records = [r for _, _, r in store.index]
    assert [int(r["id"]) for r in records] == list(range(24))
    assert {r["split"] for r in records} == {"train", "val", "test"}
    x = store.gather([(s, r) for s, r, _ in store.index], "avg")
    assert x.shape == (24, 1, 5, 64) and bool(torch.isfinite(x).all())
    assert bool((x[:, 0, 0, :32].abs().sum(-1) > 0).all()) and x[:, 0, 0, 32:].abs().sum() == 0
    assert bool((x[:, 0, 1:].abs().sum(-1) > 0).all())  # every site of every image was written
    assert not torch.allclose(x[0], x[1])  # different images, different features

    main(["fit", "--config", str(probes), "--trainer.max_epochs", "5", "--trainer.enable_progress_bar", "false"])
    report = json.loads((tmp_path / "probing" / "probes_image_llava" / "probes.json").read_text())
    assert report["sites"] == sites and report["side"] == "visual"
    assert (report["num_train"], report["num_val"], report["num_test"]) == (8, 8, 8)
    for split in ("val", "test"):
        assert report[split]["hca"].keys() == set(sites)
        for site in sites:
            accs = report[split]["accuracy"][site]
            assert len(accs) == 4 and all(a is not None and 0.0 <= a <= 1.0 for a in accs), (split, site, accs)
            assert 0.0 <= report[split]["hca"][site] <= 1.0
    print("LLaVA-OV probe test accuracy:", json.dumps(report["test"]["accuracy"]), "hca:", json.dumps(report["test"]["hca"]))
