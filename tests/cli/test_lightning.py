"""The Lightning subcommands turn bad input into one line and exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from hiertrain.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def test_missing_model_dir_is_one_line(synth_dir: Path, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no-model-here"
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(REPO / "configs/demo/qwen_image.yaml"), f"--model.pretrained={missing}",
              f"--data.questions={synth_dir / 'questions_random.jsonl'}", f"--data.taxonomy={synth_dir / 'taxonomy.json'}",
              f"--trainer.default_root_dir={tmp_path}"])
    assert exit_info.value.code == 2
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hiertrain:")]
    assert err_lines == [f"hiertrain: {missing}: no such model directory"]


def test_error_raised_while_jsonargparse_instantiates_is_one_line(synth_dir: Path, tmp_path: Path, capsys) -> None:
    # FeatureExtractor checks its model in __init__, which jsonargparse wraps in a long ValueError.
    missing = tmp_path / "no-model-here"
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--config", str(REPO / "configs/probing/synth_extract_image.yaml"),
              f"--model.init_args.pretrained={missing}", f"--data.init_args.images={synth_dir / 'images.jsonl'}",
              f"--data.init_args.taxonomy={synth_dir / 'taxonomy.json'}", f"--trainer.default_root_dir={tmp_path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("hiertrain:")] == [f"hiertrain: {missing}: no such model directory"]
    assert "Union subtypes" not in err
