"""LoRATuner: it learns the questions, its adapter reloads exactly, checkpoints resume, DDP is exact.

The tiny Qwen2.5-VL is random-init, so what a few CPU steps can show is that tuning moves HCA on
the tuned questions from chance to (near) perfect: that needs the prompt masking, the letter
targets, the adapter placement and the evaluator's scoring to agree. Generalisation to held-out
images is the demo's business (see configs/lora/synth_demo_*.yaml).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from hiertrain.callbacks.before_after import BeforeAfterEvaluation, evaluate_split
from hiertrain.datamodules.tuning import HierTuningDataModule
from hiertrain.base.errors import HierError
from hiertrain.vlm.loading import load_vllm
from hiertrain.modules.lora_tuner import LoRATuner, load_adapter

REPO = Path(__file__).resolve().parents[2]


LIMIT = 12  # first 12 records of the synthetic file: 4 leaves x (train, val, test)


def _data_args(synth_dir: Path, limit: int = LIMIT) -> dict:
    return {
        "questions": str(synth_dir / "questions_random.jsonl"),
        "taxonomy": str(synth_dir / "taxonomy.json"),
        "subject": "shape",
        "limit": limit,
    }


def _tuner(base: Path, **kwargs) -> LoRATuner:
    args = {"rank": 16, "alpha": 32, "dropout": 0.0, "lr": 3e-3, "weight_decay": 0.0, "warmup_ratio": 0.0}
    return LoRATuner(str(base), **{**args, **kwargs})


def _trainer(root: Path, epochs: int, callbacks: list, **kwargs) -> Trainer:
    return Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, default_root_dir=root, logger=False,
        callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False, **kwargs,
    )  # fmt: skip


def _fit_on_train_split(base: Path, synth_dir: Path, root: Path, mode: str, steps: int, limit: int):
    """Tune on the train records among the first `limit` (one step per epoch); compare on them."""
    torch.manual_seed(0)
    tuner = _tuner(base)
    data = HierTuningDataModule(mode=mode, train_batch_size=limit, **_data_args(synth_dir, limit))
    compare = BeforeAfterEvaluation({"synthetic": _data_args(synth_dir, limit)}, modes=[mode], split="train")
    checkpoint = ModelCheckpoint(dirpath=root / "checkpoints" / mode, save_last=True)
    # validation runs (sanity check included) but, unmonitored, the last weights are exported
    trainer = _trainer(root, steps, [checkpoint, compare], check_val_every_n_epoch=steps)
    trainer.fit(tuner, datamodule=data)
    return tuner, compare.doc, trainer


@pytest.fixture(scope="module")
def small_image_qwen(tiny_qwen, tmp_path_factory) -> Path:
    """The tiny Qwen2.5-VL whose processor scales images to 112 px (16 visual tokens, not 256):
    the same model and code path, 10x cheaper image steps on CPU."""
    out = tmp_path_factory.mktemp("tiny_qwen_112") / "model"
    shutil.copytree(tiny_qwen, out)
    config_path = out / "processor_config.json"
    config = json.loads(config_path.read_text())
    config["image_processor"]["size"]["longest_edge"] = 112 * 112
    config_path.write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def tuned_image(small_image_qwen, synth_dir, tmp_path_factory):
    # 2 train records x 4 levels; 100 steps at lr 3e-3 (60 were not enough)
    return _fit_on_train_split(small_image_qwen, synth_dir, tmp_path_factory.mktemp("lora_image"), "image", 100, 6)


@pytest.mark.parametrize("mode", ["image", "text"])
@pytest.mark.slow
def test_tuning_lifts_hca_from_chance_to_near_perfect(mode, tiny_qwen, synth_dir, tmp_path_factory, request) -> None:
    if mode == "image":
        tuner, doc, trainer = request.getfixturevalue("tuned_image")
    else:
        tuner, doc, trainer = _fit_on_train_split(tiny_qwen, synth_dir, tmp_path_factory.mktemp("lora_text"), "text", 100, 12)
    (row,) = doc["rows"]
    assert (row["dataset"], row["mode"], row["split"]) == ("synthetic", mode, "train")
    assert row["num_samples"] == (2 if mode == "image" else 4)
    # chance: 2 x 4 x 4 x 4 options (image) or the first three levels (text), hand-derived
    assert row["chance"]["hca"] == pytest.approx(1 / 128 if mode == "image" else 1 / 32)
    before, after = row["before"]["hca"], row["after"]["hca"]
    print(f"{mode}: HCA before {before:.2f}, after {after:.2f}, chance {row['chance']['hca']:.4f}")
    assert before <= 0.25 and after >= 0.75 and row["delta"]["hca"] >= 0.5
    run_dir = tuner.exported_adapter.parent
    assert json.loads((run_dir / "before_after.json").read_text()) == doc
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["kind"] == "lora" and meta["adapter"] == str(tuner.exported_adapter) and meta["mode"] == mode


def test_image_tuning_reads_the_image(small_image_qwen, synth_dir) -> None:
    """Same question, same options, two images with different answers: only a model that reads
    the image through the tuned path can get both right (text alone fits at most one)."""
    from PIL import Image

    from hiertrain.datamodules.tuning import TuningCollator
    from hiertrain.protocol.prompts import chat_messages, image_prompt, question_text

    torch.manual_seed(0)
    tuner = _tuner(small_image_qwen)
    tuner.configure_model()
    collator = TuningCollator(tuner.processor, tuner.family)
    messages = chat_messages(question_text(image_prompt(0, "shape", "shape"), ["circle", "square", "triangle", "ellipse"]), "image")
    images = [Image.open(synth_dir / "images" / f"{name}_0.png").convert("RGB") for name in ("red_solid_circle", "blue_striped_square")]
    batch = collator.pad([collator.example(messages, "A", images[0]), collator.example(messages, "B", images[1])])
    target = (batch["labels"] != -100).long().argmax(1)  # first target token: the letter
    rows = torch.arange(2)
    optimizer = torch.optim.AdamW([p for p in tuner.model.parameters() if p.requires_grad], lr=1e-3)

    def right() -> list[bool]:
        with torch.no_grad():
            logits = tuner.model(**batch).logits
        return (logits[rows, target - 1].argmax(-1) == batch["labels"][rows, target]).tolist()

    assert right() != [True, True]
    for _ in range(60):
        loss = tuner.model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert right() == [True, True]


def _logits(model, processor, item) -> torch.Tensor:
    from hiertrain.vlm.prefix_cache import render_chat

    prompt = render_chat(processor, item["levels"][0].messages)
    inputs = processor(text=[prompt], images=[item["image"]], return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits[0, -1]


def test_reloaded_adapter_changes_logits_and_equals_in_memory(tuned_image, small_image_qwen, synth_dir) -> None:
    tuner, _, _ = tuned_image
    adapter = tuner.exported_adapter
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert (adapter / "chat_template.jinja").is_file()  # processor saved beside it
    data = HierTuningDataModule(mode="image", **_data_args(synth_dir))
    item = data.split_dataset("train")[0]
    tuner.model.eval()
    in_memory = _logits(tuner.model, tuner.processor, item)
    base, processor = load_vllm(str(small_image_qwen))
    base_logits = _logits(base, processor, item)
    reloaded = load_adapter(base, adapter)
    reloaded_logits = _logits(reloaded, processor, item)
    assert (reloaded_logits - base_logits).abs().max() > 0.1
    torch.testing.assert_close(reloaded_logits, in_memory, rtol=0, atol=1e-5)


def test_adapter_keys_that_do_not_load_are_caught(tuned_image, tiny_qwen, tmp_path) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file, save_file

    tuner, _, _ = tuned_image
    broken = tmp_path / "adapter"
    shutil.copytree(tuner.exported_adapter, broken)
    weights = load_file(str(broken / "adapter_model.safetensors"))
    # the module path an older transformers used: PEFT finds no such module and only warns
    renamed = {k.replace(".language_model.layers.", ".layers."): v for k, v in weights.items()}
    save_file(renamed, str(broken / "adapter_model.safetensors"))
    base, _ = load_vllm(str(tiny_qwen))
    with pytest.warns(UserWarning, match="missing adapter keys"):
        PeftModel.from_pretrained(base, str(broken))  # the trap: loads "fine", adapters are zero
    base, _ = load_vllm(str(tiny_qwen))
    with pytest.raises(HierError, match="adapter tensors match no module"):
        load_adapter(base, broken)
    with pytest.raises(HierError, match="not a PEFT adapter"):
        load_adapter(base, tmp_path)


class _RecordStart(Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        self.step = trainer.global_step
        self.lora = {k: v.detach().clone() for k, v in pl_module.state_dict().items() if "lora_" in k}


def test_checkpoints_hold_lora_only_and_resume_from_last(tiny_qwen, synth_dir, tmp_path) -> None:
    data_args = _data_args(synth_dir, limit=6)  # 2 train records, 2 val
    ckpt_dir = tmp_path / "checkpoints" / "run"

    def run(epochs: int, ckpt_path: str | None):
        tuner = _tuner(tiny_qwen)
        data = HierTuningDataModule(mode="text", train_batch_size=1, **data_args)
        start = _RecordStart()
        checkpoint = ModelCheckpoint(dirpath=ckpt_dir, monitor="val/hca", mode="max", save_last=True)
        trainer = _trainer(tmp_path, epochs, [checkpoint, start], num_sanity_val_steps=0)
        trainer.fit(tuner, datamodule=data, ckpt_path=ckpt_path)
        return tuner, trainer, start

    tuner, trainer, _ = run(1, None)
    assert trainer.global_step == 2
    saved = torch.load(ckpt_dir / "last.ckpt", weights_only=False)
    assert saved["state_dict"] and all("lora_" in k for k in saved["state_dict"])
    assert set(saved["state_dict"]) == {f"model.{n}" for n, p in tuner.model.named_parameters() if p.requires_grad}
    assert saved["optimizer_states"]  # so the resumed AdamW continues, not restarts
    # the killed run is resumed by a fresh process: new module, same config, `ckpt_path=last`
    _, trainer, start = run(2, "last")
    assert start.step == 2 and trainer.global_step == 4
    assert start.lora.keys() == saved["state_dict"].keys()
    for key, value in saved["state_dict"].items():
        assert torch.equal(start.lora[key], value), key


def test_checkpoint_without_lora_weights_is_refused(tiny_qwen) -> None:
    tuner = _tuner(tiny_qwen)
    with pytest.raises(HierError, match="checkpoint lacks 28 LoRA weights"):
        tuner.on_load_checkpoint({"state_dict": {}})


def test_bad_hyperparameters_are_errors(tiny_qwen) -> None:
    with pytest.raises(HierError, match="rank >= 1"):
        LoRATuner(str(tiny_qwen), rank=0)
    with pytest.raises(HierError, match="warmup_ratio"):
        LoRATuner(str(tiny_qwen), warmup_ratio=1.5)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs" / "lora").glob("*.yaml")))
def test_lora_configs_parse_with_paper_defaults(name, capsys) -> None:
    from hiertrain.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs" / "lora" / name), "--print_config"])
    assert exit_info.value.code in (0, None)
    import yaml

    config = yaml.safe_load(capsys.readouterr().out)
    model = config["model"]["init_args"]
    callbacks = [c["class_path"] for c in config["trainer"]["callbacks"]]
    assert "hiertrain.callbacks.before_after.BeforeAfterEvaluation" in callbacks
    assert config["trainer"]["callbacks"][0]["init_args"]["monitor"] == "val/hca"
    if name.startswith("qwen2_5_vl_7b"):
        paper = {"rank": 64, "alpha": 64, "dropout": 0.2, "lr": 5e-5, "weight_decay": 0.1, "warmup_ratio": 0.03}
        assert {k: model[k] for k in paper} == paper
        assert model["gradient_checkpointing"] is True and config["trainer"]["precision"] == "bf16-mixed"
        assert config["trainer"]["max_epochs"] == 1
        assert config["data"]["init_args"]["mode"] == ("text" if "text" in name else "image")


@pytest.mark.slow
def test_ddp_fit_on_two_processes_has_exact_validation_metrics(tiny_qwen, synth_dir, tmp_path) -> None:
    """2 gloo processes; 7 val records, so one rank gets a padding copy that must not count."""
    root = tmp_path / "ddp"
    ckpt_dir = root / "checkpoints" / "ddp"
    args = _data_args(synth_dir, limit=21)  # 7 leaves x (train, val, test)
    config = {
        "model": {"class_path": "hiertrain.modules.lora_tuner.LoRATuner",
                  "init_args": {"pretrained": str(tiny_qwen), "rank": 8, "alpha": 16, "dropout": 0.0, "lr": 3e-3}},
        "data": {"class_path": "hiertrain.datamodules.tuning.HierTuningDataModule",
                 "init_args": {**args, "mode": "text", "train_batch_size": 2, "batch_size": 2}},
        "trainer": {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "max_epochs": 1,
                    "default_root_dir": str(root), "enable_progress_bar": False, "num_sanity_val_steps": 0,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(root), "name": "csv", "version": "v"}},
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(ckpt_dir), "monitor": "val/hca", "mode": "max"}},
                                  {"class_path": "hiertrain.callbacks.before_after.BeforeAfterEvaluation",
                                   "init_args": {"datasets": {"synthetic": args}, "modes": ["text"], "split": "test",
                                                 "batch_size": 2}}]},
    }  # fmt: skip
    path = tmp_path / "ddp.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "hiertrain"), "fit", "--config", str(path)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [r for r in csv.DictReader(open(root / "csv" / "v" / "metrics.csv")) if r.get("val/hca")]
    assert len(rows) == 1
    logged = rows[0]
    # recompute in one process from the exported adapter (the only validation = the best)
    base, _ = load_vllm(str(tiny_qwen))
    tuner = _tuner(tiny_qwen)
    tuner.processor = load_vllm(str(tiny_qwen))[1]
    tuner.model = load_adapter(base, ckpt_dir / "adapter")
    data = HierTuningDataModule(mode="text", batch_size=2, **args)
    data.connect(processor=tuner.processor, family=tuner.family)
    metrics, n, skipped = evaluate_split(tuner, data, "val", adapter=True)
    assert (n, skipped) == (7, 0)
    names = ("hca", "leaf_accuracy", "point_overlap", "strict_point_overlap", "top_overlap", "hierarchical_f1")
    for name in names:
        assert float(logged[f"val/{name}"]) == pytest.approx(metrics[name], abs=1e-6), name
    # the before/after comparison was sharded over the 2 ranks too (7 test records: one padding copy)
    (row,) = json.loads((ckpt_dir / "before_after.json").read_text())["rows"]
    assert row["num_samples"] == 7
    for adapter, side in ((False, "before"), (True, "after")):
        expected, _, _ = evaluate_split(tuner, data, "test", adapter=adapter)
        for name in ("hca", "leaf_accuracy", "point_overlap", "hierarchical_f1"):
            assert row[side][name] == pytest.approx(expected[name], abs=1e-12), (side, name)


def _seeded_fit(tiny_qwen: Path, synth_dir: Path, root: Path, seed: int = 0) -> tuple[bytes, dict]:
    """`hiertrain fit` of a config that names its seed (as configs/lora/*.yaml do): shuffled
    one-record batches and LoRA dropout, so both the loader's and the dropout's RNG are used."""
    from hiertrain.cli.lightning import run_lightning_cli

    args = _data_args(synth_dir)
    config = {
        "seed_everything": seed,
        "model": {"class_path": "hiertrain.modules.lora_tuner.LoRATuner",
                  "init_args": {"pretrained": str(tiny_qwen), "rank": 4, "alpha": 8, "dropout": 0.1, "lr": 3e-3}},
        "data": {"class_path": "hiertrain.datamodules.tuning.HierTuningDataModule",
                 "init_args": {**args, "mode": "text", "train_batch_size": 1, "batch_size": 4}},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 2, "default_root_dir": str(root),
                    "enable_progress_bar": False, "enable_model_summary": False, "logger": False,
                    "num_sanity_val_steps": 0,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(root / "ckpt"), "monitor": "val/hca", "mode": "max"}},
                                  {"class_path": "hiertrain.callbacks.before_after.BeforeAfterEvaluation",
                                   "init_args": {"datasets": {"synthetic": args}, "modes": ["text"], "split": "test",
                                                 "batch_size": 4}}]},
    }  # fmt: skip
    path = root / "fit.yaml"
    root.mkdir(parents=True)
    path.write_text(json.dumps(config))  # JSON is YAML
    run_lightning_cli(["fit", "--config", str(path)])
    adapter = root / "ckpt" / "adapter"
    return (adapter / "adapter_model.safetensors").read_bytes(), json.loads((root / "ckpt" / "before_after.json").read_text())


@pytest.mark.slow
def test_two_fits_of_one_config_give_identical_adapters_and_tables(tiny_qwen, synth_dir, tmp_path) -> None:
    """The demo's LoRA step must be reproducible: same config (seed named in it) -> same bytes,
    whatever the process's RNGs held before (they are disturbed between the fits)."""
    import random

    first, doc_first = _seeded_fit(tiny_qwen, synth_dir, tmp_path / "a")
    torch.manual_seed(12345)
    random.seed(12345)
    torch.rand(7)
    second, doc_second = _seeded_fit(tiny_qwen, synth_dir, tmp_path / "b")
    assert first == second
    for doc in (doc_first, doc_second):
        doc.pop("tuned")  # the adapter's path
    assert doc_first == doc_second
    other, _ = _seeded_fit(tiny_qwen, synth_dir, tmp_path / "c", seed=1)
    assert other != first  # the seed is what fixes it (not a fit that ignores its RNG)


@pytest.mark.parametrize("export", ["best", "last"])
def test_export_last_keeps_the_final_weights_and_best_the_monitored_checkpoint(export, tiny_qwen, synth_dir, tmp_path) -> None:
    """The paper keeps the final weights after its epoch (train.py:211-223): export last; the best
    checkpoint (monitored val/hca) is the default and stays on disk either way."""
    data = HierTuningDataModule(mode="text", train_batch_size=1, **_data_args(synth_dir, limit=6))
    tuner = _tuner(tiny_qwen, export=export, adapter_dir=str(tmp_path / "adapter"))
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/hca", mode="max", save_last=True)
    trainer = _trainer(tmp_path, 2, [checkpoint], num_sanity_val_steps=0)
    trainer.fit(tuner, datamodule=data)
    final = {k: v.clone() for k, v in tuner.state_dict().items() if "lora_" in k}
    tuner.finalize_adapter()
    assert Path(checkpoint.best_model_path).is_file()
    if export == "last":
        assert tuner.adapter_choice == "last weights"
        assert all(torch.equal(tuner.state_dict()[k], v) for k, v in final.items())
    else:
        assert tuner.adapter_choice == f"best: {checkpoint.best_model_path}"
        best = torch.load(checkpoint.best_model_path, weights_only=False)["state_dict"]
        assert all(torch.equal(tuner.state_dict()[k], best[k]) for k in final)
    with pytest.raises(HierError, match="export 'first'"):
        LoRATuner(str(tiny_qwen), export="first")


def test_validation_asks_the_datas_condition_as_hiertrain_test_does(tiny_qwen, synth_dir, tmp_path) -> None:
    """LoRA validation and before/after score the data's condition (here: taxonomy in context, on
    its run-wide cached prefix) exactly as `hiertrain test` does; the adapter off = the base model."""
    from hiertrain.metrics.predictions import load_predictions
    from hiertrain.datamodules.questions import HierVQADataModule
    from hiertrain.modules.vllm_evaluator import VLLMEvaluator
    from hiertrain.vlm.global_prefix import GlobalPrefixAnswerer

    tuner = _tuner(tiny_qwen)
    tuner.configure_model()
    data = HierTuningDataModule(mode="text", batch_size=4, condition="taxonomy", **_data_args(synth_dir))
    data.connect(processor=tuner.processor, family=tuner.family)
    preds: list = []
    evaluate_split(tuner, data, "val", adapter=False, keep=preds)
    assert isinstance(tuner.scorer(data.protocol).engine, GlobalPrefixAnswerer)
    reference = VLLMEvaluator(str(tiny_qwen), answer="logits", run_name="ref")
    args = {k: v for k, v in _data_args(synth_dir).items() if k != "limit"}
    dm = HierVQADataModule(mode="text", condition="taxonomy", split="val", limit=LIMIT, **args)
    _trainer(tmp_path, 1, []).test(reference, datamodule=dm, verbose=False)
    ref = {p.id: p for p in load_predictions(tmp_path / "ref/predictions.jsonl")}
    shared = [p for p in preds if p.id in ref]
    assert len(shared) >= 2
    for p in shared:
        assert [lv.question for lv in p.levels] == [lv.question for lv in ref[p.id].levels]
        assert [lv.letter for lv in p.levels] == [lv.letter for lv in ref[p.id].levels], p.id


@pytest.mark.parametrize("condition", ["cot", "binary", "open"])
def test_conditions_answered_in_generated_text_are_refused_for_tuning(condition, tiny_qwen, synth_dir, tmp_path) -> None:
    data = HierTuningDataModule(mode="image", condition=condition, **_data_args(synth_dir))
    with pytest.raises(HierError) as err:
        _trainer(tmp_path, 1, [], limit_train_batches=1, limit_val_batches=1).fit(_tuner(tiny_qwen), datamodule=data)
    assert f"condition {condition!r} is answered by generated text" in str(err.value) and "\n" not in str(err.value)


KILLER = '''
import os, signal
from lightning.pytorch.callbacks import Callback

class KillAtStep(Callback):
    """SIGKILL this process (no clean-up, no on_exception checkpoint) before training step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
'''


def _resume_config(tiny_qwen: Path, synth_dir: Path, root: Path, kill_at: int | None) -> Path:
    """The shipped LoRA checkpoint blocks (best by val/hca; last every 3 steps and every epoch)
    on 4 one-record steps an epoch, 3 epochs, LoRA dropout on: shuffle and dropout both draw."""
    shipped = yaml.safe_load((REPO / "configs" / "lora" / "synth_demo_text.yaml").read_text())
    checkpoints = [c for c in shipped["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    for block in checkpoints[1:]:
        if "every_n_train_steps" in block["init_args"]:
            block["init_args"]["every_n_train_steps"] = 3
    callbacks = checkpoints + ([{"class_path": "killer.KillAtStep", "init_args": {"step": kill_at}}] if kill_at else [])
    config = {
        "seed_everything": 0,
        "model": {"class_path": "hiertrain.modules.lora_tuner.LoRATuner",
                  "init_args": {"pretrained": str(tiny_qwen), "rank": 4, "alpha": 8, "dropout": 0.1, "lr": 3e-3,
                                "export": "last"}},  # the final weights (the best may predate the kill)
        "data": {"class_path": "hiertrain.datamodules.tuning.HierTuningDataModule",
                 "init_args": {**_data_args(synth_dir), "mode": "text", "train_batch_size": 1, "batch_size": 4}},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 3, "default_root_dir": str(root),
                    "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1,
                    "logger": {"class_path": "hiertrain.cli.csv_logger.KeepingCSVLogger",
                               "init_args": {"save_dir": str(root), "name": "csv", "version": "v",
                                             "flush_logs_every_n_steps": 1}},
                    "callbacks": callbacks},
    }  # fmt: skip
    path = root / f"fit_{kill_at}.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def _fit_process(config: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(config.parent), str(REPO), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    command = [sys.executable, "-m", "hiertrain.cli.main", "fit", "--config", str(config), *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def _step_losses(root: Path) -> dict[int, list[float]]:
    losses: dict[int, list[float]] = {}
    for row in csv.DictReader(open(root / "csv" / "v" / "metrics.csv")):
        if row.get("train/loss"):
            losses.setdefault(int(row["step"]), []).append(float(row["train/loss"]))
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [5, 7], ids=["after-epoch-checkpoint", "after-step-checkpoint"])
def test_killed_and_resumed_fit_equals_the_uninterrupted_one(kill_at, tiny_qwen, synth_dir, tmp_path) -> None:
    """Issue 22 item 13: a real SIGKILL, then `--ckpt_path last`: every step's training loss and
    the exported adapter equal an uninterrupted fit's. Killed before step 6 the newest last
    checkpoint is the end of epoch 1 (step 4); before step 8 it is mid-epoch 2 (step 6)."""
    from safetensors.torch import load_file

    whole, broken = tmp_path / "whole", tmp_path / "broken"
    whole.mkdir()
    broken.mkdir()
    (broken / "killer.py").write_text(KILLER)  # importable: the run's folder is on its PYTHONPATH
    done = _fit_process(_resume_config(tiny_qwen, synth_dir, whole, None))
    assert done.returncode == 0, done.stderr[-3000:]
    killed = _fit_process(_resume_config(tiny_qwen, synth_dir, broken, kill_at))
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (broken / "checkpoints" / "adapter").exists()  # it really died before the end
    resumed = _fit_process(_resume_config(tiny_qwen, synth_dir, broken, None), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr

    expected, got = _step_losses(whole), _step_losses(broken)
    assert sorted(expected) == list(range(12)) and all(len(v) == 1 for v in expected.values())
    assert sorted(got) == sorted(expected)
    redone = [step for step, values in got.items() if len(values) > 1]  # trained before the kill and again after
    assert redone == ([4] if kill_at == 5 else [6])
    for step, values in got.items():
        assert values == expected[step] * len(values), step
    assert "LoRA: best checkpoint" not in resumed.stderr  # export last: the weights after step 12
    first = load_file(str(whole / "checkpoints" / "adapter" / "adapter_model.safetensors"))
    second = load_file(str(broken / "checkpoints" / "adapter" / "adapter_model.safetensors"))
    assert first.keys() == second.keys() and first
    assert all(torch.equal(first[k], second[k]) for k in first)
