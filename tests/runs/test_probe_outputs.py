"""probes.json, plots and the printed summary: chance levels and unseen test classes are stated."""

from __future__ import annotations

import json

import pytest

from hiertrain.features.probe_spec import ProbeSpec
from hiertrain.runs.probe_outputs import load_probes, probe_report, summary_lines, write_probe_outputs


def _report() -> dict:
    spec = ProbeSpec(
        sites=["llm.0", "llm.1"],
        dims=[4, 4],
        slots=2,
        level_names=["order", "family", "species"],
        classes=[["O1", "O2"], ["F1", "F2", "F3", "F4", "F5"], ["s1", "s2", "s3"]],
        prompt_for_level=[0, 1, -1],
        probed_levels=[0, 1],
        unseen_test_classes=[[], ["F5"], []],
        split_sizes={"train": 8, "val": 2, "test": 4},
        info={"mode": "text", "pool": "avg", "model": "models/tiny_qwen", "train_taxonomy": "d/CUB200/train_taxonomy.json"},
    )
    results = {
        "test": {
            "accuracy": {"llm.0": [0.75, 0.5, None], "llm.1": [1.0, 0.25, None]},
            "hca": {"llm.0": 0.5, "llm.1": 0.25},
            "mean_accuracy": 0.625,
        }
    }
    return probe_report(spec, results, {"lr": 0.01, "output_dir": "x"})


def test_report_states_chance_and_unseen_classes():
    rep = _report()
    assert [lv["chance"] for lv in rep["levels"]] == [0.5, 0.2, None]  # leaf not probed
    assert rep["chance"]["hca"] == pytest.approx(0.1)  # 1/2 * 1/5
    assert rep["levels"][1]["unseen_test_classes"] == 1
    assert rep["levels"][1]["unseen_test_class_names"] == ["F5"]
    assert "output_dir" not in rep["probe"]
    # the keys docs/ARCHITECTURE.md promises `hiertrain report`
    assert rep["side"] == "text" and rep["pooling"] == "avg"
    assert rep["sites"] == ["llm.0", "llm.1"] and rep["level_names"] == ["order", "family", "species"]
    assert rep["chance"]["accuracy"] == [0.5, 0.2, None]
    assert rep["unseen_test_classes"] == {"order": 0, "family": 1}
    assert (rep["num_train"], rep["num_val"], rep["num_test"]) == (8, 2, 4)
    assert rep["test"]["hca"] == {"llm.0": 0.5, "llm.1": 0.25} and rep["val"] is None


def test_summary_and_files(tmp_path, capsys):
    rep = _report()
    lines = summary_lines(rep)
    assert lines[0] == "probe test accuracy (n=4); model selection: val"  # which split chose the probes
    assert lines[1].split() == ["site", "order", "family", "HCA"]
    assert lines[2].split() == ["(chance)", "0.500", "0.200", "0.1000"]
    assert lines[3].split() == ["llm.0", "0.750", "0.500", "0.500"]
    assert any("1 test classes never seen in train" in line for line in lines)
    path = write_probe_outputs(rep, tmp_path, seed=7)
    assert load_probes(path) == json.loads(json.dumps(rep))
    run = json.loads((tmp_path / "run.json").read_text())
    assert (run["kind"], run["dataset"], run["model_name"], run["side"], run["seed"]) == ("probe", "cub200", "tiny_qwen", "text", 7)
    for name in ("accuracy_vs_layer.png", "hca_vs_layer.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert "never seen in train" in capsys.readouterr().out


def test_wandb_logger_gets_the_plots(tmp_path):
    class WandbLogger:  # stands in for lightning's (matched by class name)
        def __init__(self):
            self.logged = []

        def log_image(self, key, images, caption):
            self.logged.append((key, images, caption))

    logger = WandbLogger()
    write_probe_outputs(_report(), tmp_path, loggers=[logger])
    assert logger.logged[0][0] == "probes" and logger.logged[0][2] == ["accuracy_vs_layer", "hca_vs_layer"]
