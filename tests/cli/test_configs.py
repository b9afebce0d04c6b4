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
