"""Every config parses (`--print_config`) alone or composed model + data, as documented."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hiertrain.cli.main import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MODELS = sorted((CONFIGS / "models").glob("*.yaml"))
DATA = sorted((CONFIGS / "data").glob("*.yaml"))
DEMO = sorted((CONFIGS / "demo").glob("*.yaml"))
PAPER_MODELS = {"qwen2_5_vl_7b", "qwen2_5_vl_32b", "qwen2_5_vl_72b", "llava_ov_7b", "internvl2_5_8b",
                "internvl3_8b", "openclip_vit_l_14", "siglip_so400m"}  # fmt: skip
PAPER_DATA = {"cub200_random", "inat21_animal", "inat21_plant", "imagenet_animal", "imagenet_artifact", "food"}


def _printed(capsys, *configs: Path) -> dict:
    argv = ["test"]
    for config in configs:
        argv += ["--config", str(config)]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_the_papers_models_and_taxonomies_have_configs():
    assert PAPER_MODELS <= {p.stem for p in MODELS}
    assert PAPER_DATA <= {p.stem for p in DATA}
    assert DEMO


@pytest.mark.slow
def test_every_model_config_composes_with_a_data_config(capsys):
    for i, model in enumerate(MODELS):
        data = DATA[i % len(DATA)]
        printed = _printed(capsys, model, data)
        expected = yaml.safe_load(model.read_text())["model"]
        assert printed["model"]["class_path"] == expected["class_path"]
        for key, value in expected["init_args"].items():  # pretrained (served: base_url, model, ...)
            assert printed["model"]["init_args"][key] == value
        assert printed["data"]["init_args"]["questions"] == yaml.safe_load(data.read_text())["data"]["init_args"]["questions"]


def test_every_data_config_parses(capsys):
    for data in DATA:
        printed = _printed(capsys, MODELS[0], data)
        assert printed["data"]["class_path"] == "hiertrain.datamodules.questions.HierVQADataModule"


def test_demo_configs_parse_on_their_own(capsys):
    for demo in DEMO:
        printed = _printed(capsys, demo)
        assert printed["data"]["init_args"]["questions"].startswith("runs/demo/")
        assert printed["trainer"]["accelerator"] == "cpu"


# ---- configs/paper: one preset per model x dataset x mode the paper reports ------------------------

ALL_PRESETS = sorted((CONFIGS / "paper").rglob("*.yaml"))
# evaluation presets (`hiertrain test`); probing and LoRA presets are fit/predict configs (tested below)
PRESETS = [p for p in ALL_PRESETS if p.parent.name not in ("probing", "lora")]


def _compose_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("paper_compose", CONFIGS / "paper" / "compose.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
@pytest.mark.slow
def test_every_paper_preset_parses(capsys, preset):
    printed = _printed(capsys, preset)
    written = yaml.safe_load(preset.read_text())
    assert printed["model"]["init_args"]["pretrained"] == written["model"]["init_args"]["pretrained"]
    data = printed["data"]["init_args"]
    assert data["mode"] == ("text" if preset.stem.endswith("_text") else "image")
    assert data["prompt_variant"] == written["data"]["init_args"]["prompt_variant"]
    assert data["prompt_family"] == written["data"]["init_args"]["prompt_family"]


def test_paper_presets_are_their_model_and_data_configs():
    """Each file is what compose.py makes of today's models/ and data/ configs (rerun it after editing them)."""
    compose = _compose_module()
    expected = compose.presets()
    assert {str(p.relative_to(CONFIGS)) for p in ALL_PRESETS} == set(expected)
    for name, (config, header) in expected.items():
        assert (CONFIGS / name).read_text() == compose.render(config, header), f"{name} is stale: python configs/paper/compose.py"


def test_paper_presets_hold_the_papers_settings():
    load = lambda name: yaml.safe_load((CONFIGS / "paper" / name).read_text())  # noqa: E731
    qwen_plant = load("qwen2_5_vl_7b/inat21_plant.yaml")
    assert qwen_plant["data"]["init_args"]["prompt_variant"] == 1 and qwen_plant["data"]["init_args"]["prompt_family"] == "inat"
    assert qwen_plant["model"]["init_args"]["max_new_tokens"] == 5 and qwen_plant["model"]["init_args"]["max_image_side"] == 1680
    assert load("qwen2_5_vl_7b/cub200_similar.yaml")["model"]["init_args"]["max_new_tokens"] == 10
    assert load("qwen2_5_vl_32b/inat21_plant.yaml")["data"]["init_args"]["prompt_variant"] == 0
    assert load("internvl2_5_8b/imagenet_animal.yaml")["data"]["init_args"]["prompt_variant"] == 2
    assert load("internvl3_8b/food.yaml")["model"]["init_args"]["processor_kwargs"] == {"max_patches": 4}
    llava = load("llava_ov_7b/inat21_animal.yaml")["model"]["init_args"]
    assert llava["image_aspect_ratio"] == "pad" and llava["max_new_tokens"] == 10
    for name in ("llava_ov_7b/imagenet_artifact_text.yaml", "qwen2_5_7b_instruct/imagenet_artifact_text.yaml"):
        text = load(name)
        assert text["data"]["init_args"]["prompt_variant"] == 2 and text["data"]["init_args"]["shuffle_options"] is False
        assert text["model"]["init_args"]["max_new_tokens"] == 5 and text["model"]["init_args"]["answer_parser"] == "paper"
    assert load("siglip_so400m/food.yaml")["model"]["init_args"]["pretrained"] == "hf-hub:timm/ViT-SO400M-14-SigLIP-384"
    assert not (CONFIGS / "paper" / "qwen2_5_vl_7b" / "food_text.yaml").exists()  # the paper has no Food text run
    assert len(PRESETS) == 8 * 6 + 7 * 5 + 15 + 5  # + the condition presets (test below) + the raw-prompt (--base) runs
    internvl = load("internvl2_5_8b/cub200_similar.yaml")["model"]["init_args"]
    assert internvl["system_prompt"] == "model_default"  # model.chat's system message
    assert load("llava_ov_7b/cub200_similar_text.yaml")["data"]["init_args"]["label_case"] == "lower"
    assert "label_case" not in load("qwen2_5_vl_7b/cub200_similar_text.yaml")["data"]["init_args"]
    assert "leading newline" not in (CONFIGS / "paper" / "llava_ov_7b" / "cub200_similar.yaml").read_text()
    raw = load("qwen2_5_7b_instruct/inat21_plant_raw_text.yaml")
    assert raw["model"]["init_args"]["chat"] is False and raw["data"]["init_args"]["prompt_variant"] == 1


def test_condition_presets_hold_the_papers_prompt_engineering_settings():
    load = lambda name: yaml.safe_load((CONFIGS / "paper" / name).read_text())  # noqa: E731
    tax = load("qwen2_5_vl_7b/cub200_similar_taxonomy.yaml")
    assert tax["data"]["init_args"]["condition"] == "taxonomy" and tax["data"]["init_args"]["prompt_variant"] == 0
    assert tax["model"]["init_args"]["max_new_tokens"] == 10 and tax["model"]["init_args"]["answer"] == "generate"
    cot = {m: load(f"{m}/cub200_similar_cot.yaml")["data"]["init_args"] for m in ("qwen2_5_vl_7b", "internvl2_5_8b", "llava_ov_7b")}
    assert [cot[m]["cot_apostrophe"] for m in cot] == ["typographic", "ascii", "ascii"]
    assert load("internvl2_5_8b/imagenet_animal_cot.yaml")["data"]["init_args"]["prompt_variant"] == 2
    assert load("qwen2_5_vl_7b/inat21_plant_cot.yaml")["model"]["init_args"]["max_new_tokens"] == 5
    bio = load("qwen2_5_vl_7b/inat21_animal_bio_cot.yaml")
    assert bio["data"]["init_args"]["prompt_variant"] == 1 and bio["data"]["init_args"]["subject"] == "animal"
    binary = load("qwen2_5_vl_7b/cub200_similar_binary.yaml")
    assert binary["data"]["init_args"]["condition"] == "binary" and binary["model"]["init_args"]["max_new_tokens"] == 10
    assert len([p for p in PRESETS if p.stem.endswith(("_taxonomy", "_cot", "_binary"))]) == 15


# ---- configs/paper/probing and configs/paper/lora ---------------------------------------------------


def _fit_printed(capsys, subcommand: str, config: Path) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


PROBE_PRESETS = sorted((CONFIGS / "paper" / "probing").glob("*.yaml"))


@pytest.mark.parametrize("preset", PROBE_PRESETS, ids=lambda p: p.stem)
@pytest.mark.slow
def test_paper_probing_presets_parse_and_pin_the_papers_values(capsys, preset):
    """vlm_probing.py:111 (Adam 1e-4, no decay), :16/107 (nn.Linear init), :245 (raw features),
    :212 (500 epochs), :163-173 (best epoch on test), :121-126 (file order); resizing per site:
    vlm_probe_data_gen.py:122-137, vlm_probe_data_gen_llm.py:156-171."""
    printed = _fit_printed(capsys, "predict" if "_extract_" in preset.stem else "fit", preset)
    data = printed["data"]["init_args"]
    if "_extract_" in preset.stem:
        if preset.stem.endswith("_vision"):
            assert (data["max_image_side"], data["max_pixels"]) == (1680, 1280 * 28 * 28)
            assert printed["model"]["init_args"]["llm_layers"] == []
        elif preset.stem.endswith("_llm"):
            assert (data["max_image_side"], data["max_pixels"]) == (1024, 640 * 28 * 28)
            assert printed["model"]["init_args"]["llm_layers"] == [28]
        else:
            assert data["label_in_text"] is True and data["probe_leaf"] is True
        return
    model = printed["model"]["init_args"]
    assert (model["optimizer"], model["lr"], model["weight_decay"], model["init"], model["normalize"]) == (
        "adam", 1e-4, 0.0, "torch_default", False)
    assert (data["selection"], data["shuffle"], data["batch_size"]) == ("test", False, 512)
    assert data["paper_inat_level_bug"] is preset.stem.startswith("inat")
    assert printed["trainer"]["max_epochs"] == 500
    assert not any("EarlyStopping" in c["class_path"] for c in printed["trainer"]["callbacks"])
    assert "THE PAPER'S OPTIMISTIC PROTOCOL" in preset.read_text()


def test_probing_defaults_stay_hiertrains():
    from hiertrain.datamodules.features import FeatureDataModule
    from hiertrain.modules.linear_probes import LinearProbes

    probes = LinearProbes()
    assert (probes.hparams.optimizer, probes.hparams.init, probes.hparams.normalize) == ("adamw", "scaled_randn", True)
    data = FeatureDataModule("unused")
    assert (data.selection, data.shuffle, data.paper_inat_level_bug, data.val_fraction) == ("val", True, False, 0.1)
    assert len(PROBE_PRESETS) == 2 * 6 + 1


@pytest.mark.parametrize("name", ["qwen2_5_vl_7b_paper_plant_img", "qwen2_5_vl_7b_paper_plant_text"])
def test_paper_lora_presets_parse_and_hold_the_papers_settings(capsys, name):
    printed = _fit_printed(capsys, "fit", CONFIGS / "paper" / "lora" / f"{name}.yaml")
    data = printed["data"]["init_args"]
    assert (data["min_pixels"], data["max_pixels"]) == (256 * 28 * 28, 1280 * 28 * 28)  # finetune_lora_*.sh:48-49
    assert printed["model"]["init_args"]["export"] == "last" and printed["seed_everything"] == 42
