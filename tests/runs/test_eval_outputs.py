"""Run directory: streamed parts merge into one sorted file; resume never loses or doubles a sample."""

from __future__ import annotations

import json

import pytest

from hiertrain.base.errors import HierError
from hiertrain.metrics.predictions import LevelPrediction, SamplePrediction, load_predictions
from hiertrain.runs.eval_outputs import RunDirectory, summary_table

META = {"model": "m", "questions_sha256": "abc", "mode": "image", "answer": "logits", "prompt_variant": 0,
        "seed": 0, "subject": "object", "level_names": ["a", "b", "c"], "model_name": "m", "dataset": "d"}  # fmt: skip


def _pred(i: int, right: list[bool], letters: list[str | None] | None = None) -> SamplePrediction:
    letters = letters or ["A"] * len(right)
    levels = [
        LevelPrediction(level=k + 1, name="abc"[k], truth="t", options=["t", "u"], reply=str(letter),
                        letter=letter, predicted=None if letter is None else ("t" if ok else "u"), correct=ok)
        for k, (ok, letter) in enumerate(zip(right, letters))
    ]  # fmt: skip
    return SamplePrediction(id=i, levels=levels, image=f"{i}.png", label="t", split="test")


def test_parts_merge_sorted_and_cut_line_is_redone(tmp_path):
    run = RunDirectory(tmp_path / "run", rank=0)
    run.claim(META)
    run.append(_pred(3, [True, True, True]))
    run.append(_pred(1, [True, False, True]))
    other = RunDirectory(run.path, rank=1)
    other.append(_pred(2, [False, False, False]))
    with open(other.part("predictions"), "a") as f:
        f.write('{"id": 7, "image": "7.p')  # killed mid-write
    merged = run.consolidate()
    assert [p.id for p in merged] == [1, 2, 3]
    assert not list(run.path.glob("predictions.rank*"))
    assert [p.id for p in load_predictions(run.predictions_path)] == [1, 2, 3]
    # a kill between the merge and the part removal leaves duplicates: identical ones are fine
    run.append(_pred(2, [False, False, False]))
    assert [p.id for p in run.consolidate()] == [1, 2, 3]
    run.append(_pred(2, [True, True, True]))
    with pytest.raises(HierError, match="sample 2 differs"):
        run.consolidate()


def test_claim_refuses_other_settings(tmp_path):
    RunDirectory(tmp_path).claim(META)
    RunDirectory(tmp_path).claim(dict(META, limit=5))  # limit is not part of a run's identity
    with pytest.raises(HierError, match="another answer"):
        RunDirectory(tmp_path).claim(dict(META, answer="generate"))


def test_finalize_metrics_by_hand(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.claim(META)
    run.append(_pred(0, [True, True, True]))
    run.append(_pred(1, [True, False, True]))
    run.append(_pred(2, [True, True, False], letters=["A", "A", None]))  # leaf unparseable
    run.skip(3, "3.png", "3.png: cannot read image of sample 3 (OSError)")
    run.append(_pred(9, [True, True, True]))  # not served by this run's data (e.g. larger limit earlier)
    metrics, preds = run.finalize([0, 1, 2, 3], ["a", "b", "c"], 3, META)
    assert [p.id for p in preds] == [0, 1, 2]
    assert metrics["num_samples"] == 3 and metrics["num_skipped"] == 1
    assert metrics["hca"] == pytest.approx(1 / 3)
    assert metrics["leaf_accuracy"] == pytest.approx(2 / 3)
    assert metrics["per_level_accuracy"] == pytest.approx([1.0, 2 / 3, 2 / 3])
    assert metrics["point_overlap"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert metrics["unparseable_rate"] == pytest.approx(1 / 9)
    assert json.loads((run.path / "metrics.json").read_text()) == metrics
    paper = json.loads((run.path / "results.json").read_text())
    assert len(paper) == 3 and paper[0]["ground_truth_level1"] == "t"
    assert (run.path / "per_level_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    skipped = [json.loads(line) for line in (run.path / "skipped.jsonl").read_text().splitlines()]
    assert skipped == [{"id": 3, "image": "3.png", "reason": "3.png: cannot read image of sample 3 (OSError)"}]
    assert json.loads((run.path / "run.json").read_text())["skipped"] == 1
    table = (run.path / "summary.txt").read_text()
    assert "HCA" in table and " 33.3" in table


def test_a_sample_neither_done_nor_skipped_is_an_error(tmp_path):
    run = RunDirectory(tmp_path)
    run.claim(META)
    run.append(_pred(0, [True, True, True]))
    with pytest.raises(HierError, match=r"samples \[1\] were neither evaluated nor skipped"):
        run.finalize([0, 1], ["a", "b", "c"], 3, META)


def test_summary_table_lists_levels():
    text = summary_table({"level_names": ["order", "family"], "per_level_accuracy": [0.5, None], "hca": 0.25}, META)
    assert "order" in text and " 50.0" in text and "HCA" in text and " 25.0" in text


def test_finished_ids_read_only_ids_and_merge_parts_first(tmp_path, monkeypatch):
    run = RunDirectory(tmp_path / "run", rank=0)
    run.claim(META)
    for i in (5, 2, 9):
        run.append(_pred(i, [True, False, True]))
    assert run.finished_ids() == [2, 5, 9]  # parts present: merged (consolidate) first
    assert not list(run.path.glob("predictions.rank*"))
    run.predictions_path.write_text(run.predictions_path.read_text() + '{"id": 11, "lev', encoding="utf-8")

    import hiertrain.runs.eval_outputs as outputs

    def no_objects(*args, **kwargs):
        raise AssertionError("finished_ids built SamplePrediction objects")

    monkeypatch.setattr(outputs, "read_predictions", no_objects)
    assert run.finished_ids() == [2, 5, 9]  # the cut-off line is redone, as consolidate does
    run.predictions_path.write_text('{"id": 1, "levels": []}\n\n', encoding="utf-8")
    with pytest.raises(HierError, match="predictions.jsonl:2: blank line"):
        run.finished_ids()


def test_finalize_with_the_taxonomy_writes_severity_and_path_consistency(tmp_path):
    """metrics.json of `hiertrain test` with data.taxonomy: the toy values of tests/severity_toy.py."""
    from severity_toy import HAND, PREDS, TOY

    run = RunDirectory(tmp_path / "run")
    run.claim(META)
    for p in PREDS:
        run.append(p)
    metrics, _ = run.finalize([p.id for p in PREDS], ["a", "b", "c"], 3, META, TOY)
    assert {k: metrics[k] for k in HAND} == HAND
    assert metrics["taxonomy"] == TOY.source and "taxonomy_note" not in metrics
    assert metrics["hierarchical_precision"] == pytest.approx(8 / 17)
    assert metrics["conditional_accuracy"] == [None, 0.5, 0.5]
    low, high = metrics["intervals"]["mistake_distance"]
    assert low <= HAND["mistake_distance"] <= high
    assert json.loads((run.path / "metrics.json").read_text()) == metrics
    table = (run.path / "summary.txt").read_text()
    assert "path consistency" in table and " 50.0" in table and "mistake distance" in table and "3.25" in table

    plain = RunDirectory(tmp_path / "plain")
    plain.claim(META)
    for p in PREDS:
        plain.append(p)
    metrics, _ = plain.finalize([p.id for p in PREDS], ["a", "b", "c"], 3, META)
    assert "mistake_severity" not in metrics and "no taxonomy given" in metrics["taxonomy_note"]
    assert "no taxonomy given" in (plain.path / "summary.txt").read_text()


def test_a_taxonomy_that_does_not_fit_keeps_the_run_and_says_why(tmp_path):
    """A finished run is not lost at finalize: the other metrics stand, metrics.json names the misfit."""
    from hiertrain.taxonomy.taxonomy import Taxonomy
    from severity_toy import PREDS

    other = Taxonomy.from_paths({"a": ("A", "A1", "a")})  # has no B, A2, ...
    run = RunDirectory(tmp_path / "run")
    run.claim(META)
    for p in PREDS:
        run.append(p)
    with pytest.warns(UserWarning, match="does not fit the predictions"):
        metrics, _ = run.finalize([p.id for p in PREDS], ["a", "b", "c"], 3, META, other)
    assert "path_consistency" not in metrics and metrics["taxonomy"] is None
    assert "sample 1 level 1: truth 'A'" not in metrics["taxonomy_note"]  # first misfit: sample 2's 'B'
    assert "sample 2 level 1: truth 'B' is not a level-1 node" in metrics["taxonomy_note"]
    assert metrics["hierarchical_precision"] == pytest.approx(8 / 17)
