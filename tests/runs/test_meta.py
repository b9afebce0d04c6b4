"""The run contract: one run.json writer/reader, one name derivation, an identity that sees the weights."""

from __future__ import annotations

import json
import shutil

import pytest

from hiertrain.base.errors import HierError
from hiertrain.runs.meta import (
    RunMeta,
    dataset_name,
    identity_differences,
    read_run_json,
    weights_fingerprint,
    write_run_json,
)


def test_run_json_round_trip_keeps_the_report_keys(tmp_path):
    meta = RunMeta(kind="eval", model="/models/Qwen2.5-VL-7B-Instruct/", dataset=dataset_name(None, "q/cub200.jsonl"),
                   mode="image", answer="logits", seed=0, prompt_variant=2, fields={"split": "test"})  # fmt: skip
    write_run_json(tmp_path, meta)
    back = read_run_json(tmp_path)
    for key in ("kind", "model", "model_name", "dataset", "questions", "questions_sha256", "mode", "prompt_variant",
                "answer", "seed", "num_samples", "skipped", "created"):  # fmt: skip
        assert key in back, key
    assert (back["model_name"], back["dataset"], back["split"]) == ("Qwen2.5-VL-7B-Instruct", "cub200", "test")
    assert meta.run_name == "Qwen2.5-VL-7B-Instruct-cub200-image-logits-v2"
    assert meta.wandb_identity()["name"] == meta.run_name  # W&B name = run directory name
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no .tmp left


def test_dataset_name_is_derived_one_way():
    assert dataset_name("synthetic", "q/questions_random.jsonl") == "synthetic"
    assert dataset_name(None, "q/questions_random.jsonl") == "questions_random"
    assert dataset_name(source="d/CUB200/train_taxonomy.json") == "cub200"  # probes: the store's data folder


def test_read_run_json_one_line_errors(tmp_path):
    (tmp_path / "run.json").write_text("{oops")
    with pytest.raises(HierError, match=r"run\.json:1: not valid JSON"):
        read_run_json(tmp_path)
    (tmp_path / "run.json").write_text("[1]")
    with pytest.raises(HierError, match="not a run.json object"):
        read_run_json(tmp_path)


def test_weights_fingerprint_changes_when_weights_are_rebuilt(tiny_qwen, tmp_path):
    # issue 11 case 1: rebuilt weights at the same path must not look like the same run
    from hiertrain.vlm.tiny import make_tiny

    copy = tmp_path / "model"
    shutil.copytree(tiny_qwen, copy)
    before = weights_fingerprint(copy)
    assert before == weights_fingerprint(copy) and before is not None
    shutil.rmtree(copy)
    make_tiny("qwen2_5_vl", copy, seed=1)  # same path, same sizes, other weights
    assert weights_fingerprint(copy) != before
    assert weights_fingerprint("Qwen/Qwen2.5-VL-7B-Instruct") is None  # a hub id: the id is the identity


def test_identity_differences_name_every_field():
    old = {"model": "m", "weights": "a", "settings": {"dtype": "float32", "backend": "transformers"}, "seed": 0}
    new = {"model": "m", "weights": "b", "settings": {"dtype": "bfloat16", "backend": "transformers"}, "seed": 0}
    assert identity_differences(old, new) == ["weights ('a', this run 'b')", "dtype ('float32', this run 'bfloat16')"]
    assert identity_differences(old, json.loads(json.dumps(old))) == []


def test_every_run_json_key_is_identity_unless_it_only_names_locates_or_counts():
    base = {"model": "m", "created": "2026-01-01", "limit": 4, "run_name": "r", "num_samples": 3, "image_dir": "/a"}
    # a setting no list names yet: identity by construction (resume refused, naming it)
    assert identity_differences({**base, "new_setting": 1}, {**base, "new_setting": 2}) == ["new_setting (1, this run 2)"]
    assert identity_differences({**base}, {**base, "new_setting": 2}) == ["new_setting (None, this run 2)"]
    # what only names, locates or counts a run is not
    other = {**base, "created": "2026-02-02", "limit": 8, "run_name": "s", "num_samples": 0, "image_dir": "/b"}
    assert identity_differences(base, other) == []
    # a key an older run.json lacks is read as its documented default
    assert identity_differences({"model": "m"}, {"model": "m", "condition": "plain", "label_case": "file"}) == []
    assert identity_differences({"model": "m"}, {"model": "m", "condition": "cot", "cot_apostrophe": "ascii"}) == [
        "condition ('plain', this run 'cot')", "cot_apostrophe (None, this run 'ascii')",
    ]  # fmt: skip


def test_inference_and_circular_are_identity_and_named_in_the_run_name(tmp_path):
    from hiertrain.runs.eval_outputs import RunDirectory
    from hiertrain.runs.meta import NOT_IDENTITY, RunMeta, default_run_name

    assert not {"inference", "circular"} & NOT_IDENTITY
    assert default_run_name("m", "d", "image", "logits", 0, "plain", "independent", False) == "m-d-image-logits-v0"
    assert default_run_name("m", "d", "image", "logits", 0, "plain", "stepwise", True) == "m-d-image-logits-v0-stepwise-circular"
    meta = RunMeta(kind="eval", model="/x/m", dataset="d", mode="image", answer="generate", seed=0, prompt_variant=0,
                   fields={"condition": "cot", "inference": "oracle_parent", "circular": True})  # fmt: skip
    assert meta.run_name == "m-d-image-generate-v0-cot-oracle_parent-circular"
    old = {"model": "m", "questions_sha256": "abc", "mode": "image", "answer": "logits", "seed": 0}
    RunDirectory(tmp_path).claim(old)  # a run.json from before the fields: independent, not circular
    RunDirectory(tmp_path).claim(dict(old, inference="independent", circular=False))
    with pytest.raises(HierError, match=r"circular \(False, this run True\)"):
        RunDirectory(tmp_path).claim(dict(old, circular=True))
    with pytest.raises(HierError, match=r"inference \('independent', this run 'joint'\)"):
        RunDirectory(tmp_path).claim(dict(old, inference="joint"))


def test_eval_lora_and_tuner_wandb_identity_agree_on_the_question_data(synth_dir, tmp_path):
    """`RunMeta.for_questions` is the one reader of question data: an evaluation's run.json, a
    LoRA run.json and a tuner's W&B identity over one data module record the same fields, and
    the tuner's W&B name honours the condition (before, the LoRA run.json had no condition)."""
    from types import SimpleNamespace

    from hiertrain.callbacks.before_after import write_run_json as write_lora_run_json
    from hiertrain.cli.lightning import _logger_identity
    from hiertrain.datamodules.tuning import HierTuningDataModule
    from hiertrain.modules.vllm_evaluator import VLLMEvaluator

    dm = HierTuningDataModule(str(synth_dir / "questions_random.jsonl"), mode="text", name="synth", seed=3,
                              prompt_variant=1, condition="taxonomy", taxonomy=str(synth_dir / "taxonomy.json"))  # fmt: skip
    dm.setup("fit")
    evaluator = VLLMEvaluator("Qwen/Qwen2.5-VL-7B-Instruct", answer="logits")
    eval_meta = evaluator.run_meta(dm)
    write_lora_run_json(tmp_path, SimpleNamespace(pretrained="Qwen/Qwen2.5-VL-7B-Instruct", hparams={}), dm, tmp_path / "adapter")
    lora_meta = read_run_json(tmp_path)
    tuner = SimpleNamespace(pretrained="Qwen/Qwen2.5-VL-7B-Instruct", run_name=None)
    tuner_identity = _logger_identity(tuner, dm)

    shared = ("dataset", "mode", "seed", "prompt_variant", "questions", "questions_sha256", "condition", "inference", "circular")
    expected = ("synth", "text", 3, 1, str(synth_dir / "questions_random.jsonl"), eval_meta["questions_sha256"], "taxonomy", "independent", False)
    assert tuple(eval_meta[k] for k in shared) == expected
    assert tuple(lora_meta[k] for k in shared) == expected
    assert eval_meta["run_name"] == "Qwen2.5-VL-7B-Instruct-synth-text-logits-v1-taxonomy"
    assert tuner_identity["name"] == "Qwen2.5-VL-7B-Instruct-synth-text-SimpleNamespace-v1-taxonomy"
    assert tuner_identity["group"] == "synth" == _logger_identity(evaluator, dm)["group"]
    assert tuner_identity["tags"][:3] == ["Qwen2.5-VL-7B-Instruct", "synth", "text"]
