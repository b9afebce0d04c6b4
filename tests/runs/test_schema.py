"""run.json / metrics.json models: round trip, version-0 files, one-line errors, unknown keys kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hiertrain.cli.main import main
from hiertrain.base.errors import HierError
from hiertrain.runs.eval_outputs import RunDirectory
from hiertrain.runs.meta import RunMeta, identity_differences, read_run_json, write_run_json
from hiertrain.runs.schema import SCHEMA_VERSION, MetricsJson, RunJson, checked_metrics_json

RUN = {"kind": "eval", "model": "/models/m1", "model_name": "m1", "dataset": "cub", "questions": "/data/cub.jsonl",
       "questions_sha256": "sha-cub", "mode": "image", "prompt_variant": 0, "answer": "logits", "seed": 0,
       "num_samples": 10, "skipped": 0, "split": "test", "condition": "plain"}  # fmt: skip
METRICS = {"hca": 0.5, "leaf_accuracy": 0.8, "per_level_accuracy": [0.9, 0.8], "level_names": ["order", "family"],
           "num_samples": 10, "num_skipped": 0, "chance": {"hca": 0.1, "per_level_accuracy": [0.25, 0.5]},
           "intervals": {"hca": [0.4, 0.6], "per_level_accuracy": [[0.8, 1.0], None], "ci": 0.95, "bootstrap": 200}}  # fmt: skip


def test_run_json_round_trip_is_versioned_and_typed(tmp_path: Path) -> None:
    meta = RunMeta(kind="eval", model="/models/m1", dataset="cub", mode="image", answer="logits", seed=3,
                   prompt_variant=2, fields={"split": "test", "condition": "cot", "my_new_key": [1, 2]})  # fmt: skip
    write_run_json(tmp_path, meta)
    raw = json.loads((tmp_path / "run.json").read_text())
    assert next(iter(raw)) == "schema_version" and raw["schema_version"] == SCHEMA_VERSION
    assert {k: v for k, v in raw.items() if k != "schema_version"} == meta.to_json()
    info = RunJson.read(tmp_path)
    assert (info.schema_version, info.kind, info.model_name, info.seed, info.prompt_variant, info.condition) == (
        SCHEMA_VERSION, "eval", "m1", 3, 2, "cot")
    assert info.data == raw and info.data["my_new_key"] == [1, 2]  # unknown keys: kept verbatim, never refused


def test_a_version_0_file_reads_with_the_old_defaults(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps({"model": "/models/m1", "dataset": "cub", "seed": 0}))
    info = RunJson.read(tmp_path / "run.json")
    assert info.schema_version == 0
    assert (info.kind, info.mode, info.skipped, info.inference, info.circular, info.condition) == (
        "eval", "image", 0, "independent", False, None)
    (tmp_path / "metrics.json").write_text(json.dumps({"hca": 0.5}))
    metrics = MetricsJson.read(tmp_path / "metrics.json")
    assert (metrics.schema_version, metrics.hca, metrics.per_level_accuracy, metrics.interval("hca")) == (0, 0.5, None, None)


def test_schema_version_is_not_identity_so_old_runs_resume(tmp_path: Path) -> None:
    # a run dir written before schema_version: the same run resumes (no refusal), and is then versioned
    (tmp_path / "run.json").write_text(json.dumps({**RUN, "created": "2026-01-01T00:00:00+00:00"}))
    assert identity_differences(read_run_json(tmp_path), {**RUN, "schema_version": SCHEMA_VERSION}) == []
    RunDirectory(tmp_path).claim(dict(RUN))
    back = read_run_json(tmp_path)
    assert back["schema_version"] == SCHEMA_VERSION and back["created"] == "2026-01-01T00:00:00+00:00"
    # but a real identity change is still refused
    with pytest.raises(HierError, match="seed"):
        RunDirectory(tmp_path).claim({**RUN, "seed": 1})


def test_a_newer_schema_version_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({**METRICS, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(HierError, match=rf"^{path}: schema_version {SCHEMA_VERSION + 1} is newer") as err:
        MetricsJson.read(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "field,value,what",
    [("kind", 3, "a string"), ("seed", "0", "an integer"), ("prompt_variant", 1.5, "an integer"), ("skipped", True, "an integer"),
     ("circular", "yes", "true or false"), ("level_names", ["a", 1], "a list of names"), ("schema_version", "1", "an integer")],
)  # fmt: skip
def test_each_malformed_run_field_names_file_and_field(tmp_path: Path, field: str, value, what: str) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**RUN, field: value}))
    with pytest.raises(HierError) as err:
        RunJson.read(tmp_path)
    assert str(err.value) == f"{path}: field '{field}' is {json.dumps(value)}, not {what}"


@pytest.mark.parametrize(
    "field,value,what",
    [("hca", "high", "a number"), ("num_samples", True, "a number"), ("per_level_accuracy", [0.5, "x"], "a list of numbers"),
     ("conditional_accuracy", 0.5, "a list of numbers"), ("level_names", "order", "a list of names"),
     ("chance", {"hca": "x"}, "an object with a number 'hca'"), ("chance", 0.1, "an object with a number 'hca'"),
     ("intervals", {"hca": [0.1]}, "an object of [low, high] intervals"), ("open_set", [], "an object"),
     ("taxonomy_note", 1, "a string")],
)  # fmt: skip
def test_each_malformed_metrics_field_names_file_and_field(tmp_path: Path, field: str, value, what: str) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({**METRICS, field: value}))
    with pytest.raises(HierError) as err:
        MetricsJson.read(path)
    assert str(err.value) == f"{path}: field '{field}' is {json.dumps(value)}, not {what}"


def test_not_an_object_or_not_json_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text("[1, 2]")
    with pytest.raises(HierError, match=r"metrics.json: not a metrics object \(a JSON list\)$"):
        MetricsJson.read(path)
    path.write_text('{"hca": 0.5,\n')
    with pytest.raises(HierError, match=r"metrics.json:2: not valid JSON"):
        MetricsJson.read(path)


def test_writers_check_what_they_write(tmp_path: Path) -> None:
    # a wrong type fails at write time, naming the field, before any file is written
    with pytest.raises(HierError, match=r"run.json: field 'seed' is \"0\", not an integer"):
        write_run_json(tmp_path, {**RUN, "seed": "0"})
    assert not (tmp_path / "run.json").exists()
    with pytest.raises(HierError, match=r"metrics.json: field 'hca' is \"x\", not a number"):
        checked_metrics_json({**METRICS, "hca": "x"}, tmp_path / "metrics.json")
    out = checked_metrics_json(METRICS, tmp_path / "metrics.json")
    assert list(out)[0] == "schema_version" and {k: v for k, v in out.items() if k != "schema_version"} == METRICS


def test_the_report_names_a_malformed_run_json_field(tmp_path: Path, capsys) -> None:
    run = tmp_path / "r1"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({**RUN, "condition": ["cot"]}))
    (run / "metrics.json").write_text(json.dumps(METRICS))
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"hiertrain: {(run / 'run.json').resolve()}: field 'condition' is [\"cot\"], not a string"]
