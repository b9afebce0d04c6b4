"""hiertrain.paper.presets is the one source of the paper's protocol: the shipped configs/paper presets
build exactly the question protocol and model settings it names, for exactly the runs it lists."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from hiertrain.datamodules.questions import HierVQADataModule
from hiertrain.paper.presets import PaperRun, data_settings, differences, model_settings, paper_protocol, paper_runs
from hiertrain.protocol.protocol import QuestionProtocol

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# question presets: configs/paper/<model>/*.yaml (probing/ and lora/ are fit/predict presets)
PRESET_FILES = sorted(p for p in (CONFIGS / "paper").glob("*/*.yaml") if p.parent.name not in ("probing", "lora"))
RUNS = {run.preset: run for run in paper_runs()}


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIGS / name).read_text())


def test_paper_runs_cover_every_preset_file_and_no_more():
    assert len(RUNS) == len(paper_runs()), "two runs share a preset name"
    assert {str(p.relative_to(CONFIGS)) for p in PRESET_FILES} == set(RUNS)


@pytest.mark.parametrize("name", sorted(RUNS), ids=lambda n: n.removeprefix("paper/").removesuffix(".yaml"))
def test_a_presets_data_config_builds_the_papers_protocol(name):
    run = RUNS[name]
    init_args = _load(name)["data"]["init_args"]
    data = HierVQADataModule(**init_args)  # no setup(): level names and taxonomy text are the dataset's, not the protocol's
    built = data.protocol
    expected = paper_protocol(run, built.level_names, subject=init_args["subject"], family=init_args["prompt_family"])
    for field in fields(QuestionProtocol):
        assert getattr(built, field.name) == getattr(expected, field.name), f"{name}: {field.name}"
    assert built == expected


@pytest.mark.parametrize("name", sorted(RUNS), ids=lambda n: n.removeprefix("paper/").removesuffix(".yaml"))
def test_a_presets_settings_are_the_tables(name):
    run, preset = RUNS[name], _load(name)
    for key, value in model_settings(run).items():
        assert preset["model"]["init_args"][key] == value, f"{name}: model.{key}"
    for key, value in data_settings(run).items():
        assert preset["data"]["init_args"][key] == value, f"{name}: data.{key}"
    header = (CONFIGS / name).read_text()
    assert all(f"# - {line}\n" in header for line in differences(run))


def test_the_papers_values_spot_checked():
    """Values quoted from the paper's scripts (scripts/*.sh, evaluation/*, prompt_engineering/*)."""
    plant = PaperRun("qwen2_5_vl_7b", "inat21_plant")  # all_image_benchmarks.sh --prompt_order 1; 5 tokens on iNat
    assert data_settings(plant)["prompt_variant"] == 1 and model_settings(plant)["max_new_tokens"] == 5
    assert model_settings(PaperRun("qwen2_5_vl_7b", "cub200_similar"))["max_new_tokens"] == 10
    assert model_settings(PaperRun("llava_ov_7b", "food"))["max_new_tokens"] == 10
    assert model_settings(PaperRun("internvl3_8b", "food"))["max_new_tokens"] == 5
    assert data_settings(PaperRun("internvl2_5_8b", "imagenet_animal"))["prompt_variant"] == 2
    assert data_settings(PaperRun("qwen2_5_vl_32b", "inat21_plant"))["prompt_variant"] == 0
    llava_text = PaperRun("llava_ov_7b", "cub200_similar", "text")  # evaluation/llm/llava: label=label.lower()
    assert data_settings(llava_text)["label_case"] == "lower" and model_settings(llava_text)["dtype"] == "float16"
    assert "label_case" not in data_settings(PaperRun("qwen2_5_vl_7b", "cub200_similar", "text"))
    assert data_settings(PaperRun("internvl2_5_8b", "cub200_similar", "image", "cot"))["cot_apostrophe"] == "ascii"
    assert data_settings(PaperRun("llava_ov_7b", "inat21_plant", "image", "cot"))["cot_apostrophe"] == "ascii"
    assert data_settings(PaperRun("qwen2_5_vl_7b", "cub200_similar", "image", "cot"))["cot_apostrophe"] == "typographic"
    binary = PaperRun("qwen2_5_vl_7b", "cub200_similar", "image", "binary")  # eval_CUB_binary.py
    assert model_settings(binary)["max_new_tokens"] == 10 and data_settings(binary)["condition"] == "binary"
    assert model_settings(PaperRun("internvl2_5_8b", "cub200_similar", "image", "taxonomy"))["max_new_tokens"] == 5
    assert model_settings(PaperRun("internvl3_8b", "cub200_similar"))["system_prompt"] == "model_default"
    for run in paper_runs():
        if run.mode == "text":  # the text scripts keep the file's order and reply in 5 tokens
            assert data_settings(run)["shuffle_options"] is False and model_settings(run)["max_new_tokens"] == 5
    clip = PaperRun("siglip_so400m", "inat21_animal")
    assert data_settings(clip) == {"mode": "image", "prompt_variant": 0, "shuffle_options": False}
    assert model_settings(clip) == {}
    text_variants = {d: data_settings(PaperRun("qwen2_5_7b_instruct", d, "text"))["prompt_variant"]
                     for d in ("cub200_similar", "inat21_plant", "inat21_animal", "imagenet_animal", "imagenet_artifact")}  # fmt: skip
    assert text_variants == {"cub200_similar": 1, "inat21_plant": 1, "inat21_animal": 1, "imagenet_animal": 2, "imagenet_artifact": 2}
    raw = PaperRun("qwen2_5_7b_instruct", "inat21_plant", "text", chat=False)  # the --base runs
    assert model_settings(raw)["chat"] is False and raw.preset == "paper/qwen2_5_7b_instruct/inat21_plant_raw_text.yaml"


def test_the_paper_runs_counts():
    runs = paper_runs()
    assert not any(r.dataset == "food" and r.mode == "text" for r in runs)  # the paper has no Food text script
    assert len([r for r in runs if r.condition != "plain"]) == 15
    assert len([r for r in runs if not r.chat]) == 5


def test_paper_protocol_is_a_question_protocol():
    protocol = paper_protocol(PaperRun("qwen2_5_vl_7b", "inat21_animal", "image", "bio_cot"), ["kingdom", "phylum"], "animal", "inat")
    assert protocol == QuestionProtocol(
        mode="image", level_names=("kingdom", "phylum"), subject="animal", variant=1, family="inat", shuffle=True, condition="bio_cot"
    )
    text = paper_protocol(PaperRun("llava_ov_7b", "imagenet_artifact", "text"), ("a",), "object", "imagenet_artifact")
    assert (text.variant, text.shuffle, text.label_case, text.condition) == (2, False, "lower", "plain")
