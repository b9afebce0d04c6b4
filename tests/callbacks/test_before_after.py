"""The before/after table: deltas, JSON contract (read by `hiertrain report`), chance, errors."""

from __future__ import annotations

import json

import pytest

from hiertrain.callbacks.before_after import (
    BeforeAfterEvaluation,
    BeforeAfterRow,
    before_after_doc,
    chance_hca,
    markdown,
    write_before_after,
)
from hiertrain.base.errors import HierError
from hiertrain.taxonomy.question_bank import QuestionRecord


def _rows() -> list[BeforeAfterRow]:
    # The paper's iNat21-Plant numbers: visual 17.67 -> 29.34, text HCA + 20.66 (from 30.00 here).
    return [
        BeforeAfterRow("inat21_plant", "image", {"hca": 0.1767, "leaf_accuracy": 0.5}, {"hca": 0.2934, "leaf_accuracy": 0.45}),
        BeforeAfterRow("inat21_plant", "text", {"hca": 0.30, "leaf_accuracy": None}, {"hca": 0.5066}),
    ]


def test_deltas_are_after_minus_before() -> None:
    doc = before_after_doc(_rows(), base="Qwen/Qwen2.5-VL-7B-Instruct", tuned="checkpoints/x/adapter")
    image, text = doc["rows"]
    assert image["delta"]["hca"] == pytest.approx(0.1167)
    assert image["delta"]["leaf_accuracy"] == pytest.approx(-0.05)
    assert text["delta"]["hca"] == pytest.approx(0.2066)
    assert text["delta"]["leaf_accuracy"] is None  # missing on one side: no made-up delta
    assert doc["base"] == "Qwen/Qwen2.5-VL-7B-Instruct" and doc["tuned"] == "checkpoints/x/adapter"


def test_markdown_shows_percent_and_signed_delta() -> None:
    text = markdown(before_after_doc(_rows(), "b", "t"))
    lines = text.strip().splitlines()
    assert len(lines) == 4 and lines[1].count("---") == 9
    assert "| inat21_plant | visual | - | 17.67 | 29.34 | +11.67 | 50.00 | 45.00 | -5.00 |" in lines
    assert "| inat21_plant | text | - | 30.00 | 50.66 | +20.66 | - | - | - |" in lines


def test_written_json_is_what_the_report_reads(tmp_path) -> None:
    from hiertrain.report.build import _lora_tables, collect_runs

    doc = before_after_doc(_rows(), "b", "t")
    path = write_before_after(tmp_path, doc)
    (tmp_path / "run.json").write_text(json.dumps({"kind": "lora", "model": "b", "model_name": "b", "dataset": "x"}))
    assert json.loads(path.read_text()) == doc
    assert (tmp_path / "before_after.md").read_text() == markdown(doc)
    rows = _lora_tables(collect_runs([tmp_path]))
    assert [(r["dataset"], r["mode"]) for r in rows] == [("inat21_plant", "image"), ("inat21_plant", "text")]
    assert rows[0]["hca_delta"] is not None


def test_duplicate_or_unknown_rows_are_errors() -> None:
    with pytest.raises(HierError, match="appears twice"):
        before_after_doc(_rows() + _rows()[:1], "b", "t")
    with pytest.raises(HierError, match="'video'"):
        before_after_doc([BeforeAfterRow("x", "video", {}, {})], "b", "t")
    with pytest.raises(HierError, match="no datasets"):
        BeforeAfterEvaluation(datasets={})
    with pytest.raises(HierError, match="'audio'"):
        BeforeAfterEvaluation(datasets={"x": {"questions": "q.jsonl"}}, modes=["audio"])


def _record(sample_id: int, choices: list[list[str]]) -> QuestionRecord:
    raw = {"image": "a.png", "label": "leaf", "split": "test"}
    for i, options in enumerate(choices):
        raw[f"level{i + 1}"] = options[0]
        raw[f"choices_level{i + 1}"] = options
    return QuestionRecord(raw=raw, sample_id=sample_id)


def test_chance_hca_multiplies_over_asked_levels() -> None:
    # Hand-derived: 2 x 4 x 4 x 4 options -> 1/128 on images; text skips the leaf -> 1/32.
    # A second sample with 2 x 2 options: image 1/4, text 1/2.
    records = [
        _record(0, [["a", "b"], ["c", "d", "e", "f"], ["g", "h", "i", "j"], ["k", "l", "m", "n"]]),
        _record(1, [["a", "b"], ["c", "d"]]),
    ]
    assert chance_hca(records, "image") == pytest.approx((1 / 128 + 1 / 4) / 2)
    assert chance_hca(records, "text") == pytest.approx((1 / 32 + 1 / 2) / 2)
    assert chance_hca([], "image") is None


def test_paired_rows_show_interval_and_mcnemar() -> None:
    from hiertrain.callbacks.before_after import paired_before_after
    from hiertrain.metrics.predictions import LevelPrediction, SamplePrediction

    def preds(right: list[bool]) -> list[SamplePrediction]:
        return [SamplePrediction(i, [LevelPrediction(1, "a", ["a", "b"], "A", "A", "a" if r else "b", r)]) for i, r in enumerate(right)]

    before = [True] * 6 + [True] * 2 + [False] * 8 + [False] * 4  # 2 right only before, 8 only after
    after = [True] * 6 + [False] * 2 + [True] * 8 + [False] * 4
    paired = paired_before_after(preds(before), preds(after))
    row = BeforeAfterRow("synthetic", "text", {"hca": 0.4, "leaf_accuracy": 0.4}, {"hca": 0.7, "leaf_accuracy": 0.7}, extra={"paired": paired})
    text = markdown(before_after_doc([row], "b", "t"))
    low, high = paired["metrics"]["hca"]["interval"]
    assert f"| +30.00 [{100 * low:+.2f}, {100 * high:+.2f}] |" in text
    assert text.splitlines()[2].endswith("| 0.109 | 0.109 |")  # 2 * (1 + 10 + 45) / 1024
    assert "McNemar p HCA" in text.splitlines()[0]
    with pytest.raises(HierError, match="different samples"):
        paired_before_after(preds(before), preds(after)[1:])


def test_lora_run_json_names_the_run_root_not_checkpoints(tmp_path) -> None:
    from types import SimpleNamespace

    from hiertrain.callbacks.before_after import write_run_json
    from hiertrain.protocol.protocol import QuestionProtocol
    from hiertrain.runs.meta import read_run_json

    questions = tmp_path / "q.jsonl"
    questions.write_text("{}\n")
    run_dir = tmp_path / "synth_text" / "checkpoints"
    run_dir.mkdir(parents=True)
    tuner = SimpleNamespace(pretrained="tiny", hparams={"r": 8})
    data = SimpleNamespace(name="synth", questions=str(questions), protocol=QuestionProtocol("text", ()),
                           train_split="train", split_records=lambda split: [1, 2])  # fmt: skip
    write_run_json(run_dir, tuner, data, run_dir / "adapter")
    assert read_run_json(run_dir)["run_name"] == "synth_text"
