"""The one per-batch scoring step: what it keeps, skips and counts, and that its three users agree.

`hiertrain test`, LoRA validation and the before/after comparison all score batches through
`score_batch`; the last test puts the same weights, data and condition to all three and
requires the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from hiertrain.base.errors import HierError
from hiertrain.metrics.classes import hierarchical_metrics
from hiertrain.metrics.predictions import LevelPrediction, SamplePrediction
from hiertrain.modules.evaluation_loop import gather_predictions, score_batch


def _item(sample_id: int, valid: bool = True, error: str | None = None) -> dict:
    return {"sample_id": sample_id, "valid": valid, "error": error, "image": None}


def _answer(items: list[dict]) -> list[SamplePrediction]:
    """Right at level 1 for even ids, wrong at level 2 always."""
    return [
        SamplePrediction(item["sample_id"], [LevelPrediction(1, "a", letter="A", correct=item["sample_id"] % 2 == 0), LevelPrediction(2, "b", letter="B")])
        for item in items
    ]  # fmt: skip


def test_padding_is_dropped_errors_skipped_and_the_rest_answered() -> None:
    asked: list[list[int]] = []
    skips: list[int] = []

    def answer(items):
        asked.append([i["sample_id"] for i in items])
        return _answer(items)

    batch = [_item(0), _item(1, error="bad.png: cannot read"), _item(2), _item(0, valid=False), _item(3, valid=False, error="x")]
    scored = score_batch(batch, answer, on_skip=lambda item: skips.append(item["sample_id"]))
    assert asked == [[0, 2]]  # padding repeats (another rank's samples) are neither answered nor skipped
    assert [p.id for p in scored.predictions] == [0, 2]
    assert [i["sample_id"] for i in scored.skipped] == [1] and skips == [1]


def test_check_turns_a_refusal_into_a_skip_and_may_raise() -> None:
    batch = [_item(0), _item(1), _item(2, error="unreadable")]
    scored = score_batch(batch, _answer, check=lambda item: "too wide" if item["sample_id"] == 1 else None)
    assert [p.id for p in scored.predictions] == [0]
    assert [(i["sample_id"], i["error"]) for i in scored.skipped] == [(1, "too wide"), (2, "unreadable")]

    def strict(item):
        raise HierError("x.png: cannot read image of sample 0 for this model (too wide)")

    with pytest.raises(HierError, match="sample 0"):
        score_batch([_item(0)], _answer, check=strict)


def test_an_all_skipped_batch_asks_nothing_and_updates_no_metric() -> None:
    metrics = hierarchical_metrics(2)

    def never(items):
        raise AssertionError("answered an empty batch")

    scored = score_batch([_item(0, error="bad"), _item(1, valid=False)], never, metrics=metrics, depth=2)
    assert scored.predictions == [] and len(scored.skipped) == 1
    assert torch.isnan(metrics.compute()["hca"])


def test_metrics_are_updated_with_the_answered_predictions() -> None:
    metrics = hierarchical_metrics(2)
    for ids in ([0, 1], [2, 3]):
        score_batch([_item(i) for i in ids], _answer, metrics=metrics, depth=2, device=torch.device("cpu"))
    values = metrics.compute()
    assert float(values["hca"]) == 0.0  # level 2 is always wrong
    assert [float(v) for v in values["per_level_accuracy"]] == [0.5, 0.0]


def test_gathered_predictions_are_sorted_by_id_outside_a_process_group() -> None:
    preds = _answer([_item(3), _item(1), _item(2)])
    assert [p.id for p in gather_predictions(preds)] == [1, 2, 3]



def test_before_after_equals_lora_validation_and_hiertrain_test(tiny_qwen, synth_dir, tmp_path, monkeypatch) -> None:
    """The same weights, data and condition give the same numbers through the three users of
    `score_batch`: `evaluate_split` (before/after), `LoRATuner` validation and `hiertrain test`,
    and all three ask through the one answerer interface (`Answerer.answer`) under the data's protocol."""
    from hiertrain.answerers.base import Answerer
    from hiertrain.callbacks.before_after import evaluate_split
    from hiertrain.datamodules.questions import HierVQADataModule
    from hiertrain.datamodules.tuning import HierTuningDataModule
    from hiertrain.modules.lora_tuner import LoRATuner
    from hiertrain.modules.vllm_evaluator import VLLMEvaluator

    args = {"questions": str(synth_dir / "questions_random.jsonl"), "taxonomy": str(synth_dir / "taxonomy.json"), "subject": "shape"}
    trainer_args = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    # a fresh adapter (LoRA B = 0) is the base model exactly, so `hiertrain test` of the base model is the same weights
    calls: list[tuple[str, str]] = []
    answer = Answerer.answer

    def spy(self, items):
        calls.append((type(self).__name__, self.protocol.condition))
        return answer(self, items)

    monkeypatch.setattr(Answerer, "answer", spy)
    tuner = LoRATuner(str(tiny_qwen), rank=4, alpha=8, dropout=0.0)
    data = HierTuningDataModule(mode="text", batch_size=3, condition="taxonomy", **args)  # no limit: it is taken before the split here, after it there
    (validated,) = Trainer(default_root_dir=tmp_path / "fit", **trainer_args).validate(tuner, datamodule=data, verbose=False)
    assert calls and set(calls) == {("HFAnswerer", "taxonomy")}
    calls.clear()
    split, n, skipped = evaluate_split(tuner, data, "val", adapter=True)
    base, _, _ = evaluate_split(tuner, data, "val", adapter=False)
    assert calls and set(calls) == {("HFAnswerer", "taxonomy")}
    calls.clear()
    assert n >= 2 and skipped == 0
    assert base == split  # adapter off = the base model; a zero adapter changes no number

    reference = VLLMEvaluator(str(tiny_qwen), answer="logits", run_name="ref")
    dm = HierVQADataModule(mode="text", condition="taxonomy", split="val", batch_size=3, **args)
    Trainer(default_root_dir=tmp_path, **trainer_args).test(reference, datamodule=dm, verbose=False)
    assert calls and set(calls) == {("HFAnswerer", "taxonomy")}
    tested = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    assert tested["num_samples"] == n
    names = ("hca", "leaf_accuracy", "point_overlap", "strict_point_overlap", "top_overlap", "hierarchical_f1")
    for name in names:
        assert split[name] == tested[name], name
        assert float(validated[f"val/{name}"]) == pytest.approx(split[name], abs=1e-6), name
