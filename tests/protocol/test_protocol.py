"""QuestionProtocol: one frozen object carries every question setting from the data config to the
questions (issue 21: loose arguments could be dropped on the way)."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest

from hiertrain.datamodules.questions import HierVQADataModule, QuestionDataset, level_questions
from hiertrain.protocol.protocol import QuestionProtocol

RECORD = {
    "image": "img/a.png", "label": "Red Solid Circle", "split": "test",
    "level1": "round", "choices_level1": ["round", "angular"],
    "level2": "circle", "choices_level2": ["circle", "square", "triangle", "ellipse"],
}  # fmt: skip

# data-config argument -> protocol field (the rest of HierVQADataModule's arguments locate, limit or batch data)
FROM_CONFIG = {
    "mode": "mode", "level_names": "level_names", "subject": "subject", "prompt_variant": "variant", "seed": "seed",
    "prompt_family": "family", "shuffle_options": "shuffle", "condition": "condition",
    "cot_apostrophe": "cot_apostrophe", "label_case": "label_case", "inference": "inference", "circular": "circular",
}  # fmt: skip


def test_it_is_frozen_and_holds_level_names_as_a_tuple() -> None:
    protocol = QuestionProtocol("image", ["a", "b"])
    assert protocol.level_names == ("a", "b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        protocol.seed = 1  # type: ignore[misc]


def test_every_question_setting_of_the_data_config_reaches_the_protocol(tmp_path: Path) -> None:
    fields = {f.name for f in dataclasses.fields(QuestionProtocol)}
    assert set(FROM_CONFIG.values()) | {"context"} == fields  # a new field must be mapped here
    assert set(FROM_CONFIG) <= set(inspect.signature(HierVQADataModule).parameters)
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps(RECORD) + "\n", encoding="utf-8")
    settings = {
        "mode": "text", "level_names": ["shape", "kind"], "subject": "shape", "prompt_variant": 1, "seed": 7,
        "shuffle_options": False, "condition": "cot", "cot_apostrophe": "ascii", "label_case": "lower",
    }  # fmt: skip
    dm = HierVQADataModule(str(questions), **settings)
    dm.setup()
    protocol = dm.protocol
    for arg, value in settings.items():
        want = tuple(value) if isinstance(value, list) else value
        assert getattr(protocol, FROM_CONFIG[arg]) == want, arg
    dataset = dm.dataset()
    assert isinstance(dataset, QuestionDataset) and dataset.protocol == protocol
    levels = dataset[0]["levels"]
    assert [lq.question for lq in levels] == [lq.question for lq in level_questions(dataset.records[0], protocol)]
    assert "red solid circle" in levels[0].question and "'" in levels[0].question  # lower-cased leaf, ascii apostrophe


COT = QuestionProtocol(
    mode="text", level_names=("shape", "kind"), subject="shape", variant=1, seed=7, family="cub", shuffle=False,
    condition="cot", context=None, cot_apostrophe="ascii", label_case="lower", inference="independent", circular=True,
)  # fmt: skip


def test_to_json_writes_every_field_but_the_context_and_reads_back() -> None:
    """run.json's protocol fields come from `to_json` alone, and `from_json` reads them back: a
    field added to the protocol and forgotten by `to_json` fails here."""
    written = COT.to_json()
    assert len(written) == len(dataclasses.fields(QuestionProtocol)) - 1  # all but `context`
    assert QuestionProtocol.from_json(written) == COT
    assert QuestionProtocol.from_json(dataclasses.replace(COT, context="a taxonomy").to_json()) == COT
    plain = dataclasses.replace(COT, condition="plain", circular=False)
    assert "cot_apostrophe" not in plain.to_json()  # only cot's text depends on it: other runs' identities unchanged
    assert QuestionProtocol.from_json({"mode": "image"}) == QuestionProtocol("image", ())  # a run.json before the fields


def test_an_evaluation_and_a_lora_run_json_record_the_protocol_as_to_json_writes_it(synth_dir, tmp_path) -> None:
    """Both run kinds over questions write the data's protocol through the one builder."""
    from types import SimpleNamespace

    from hiertrain.callbacks.before_after import write_run_json as write_lora_run_json
    from hiertrain.datamodules.tuning import HierTuningDataModule
    from hiertrain.modules.vllm_evaluator import VLLMEvaluator
    from hiertrain.runs.meta import read_run_json

    dm = HierTuningDataModule(str(synth_dir / "questions_random.jsonl"), mode="text", seed=3, prompt_variant=1,
                              condition="cot", cot_apostrophe="ascii", label_case="lower", shuffle_options=False)  # fmt: skip
    dm.setup("fit")
    expected = dm.protocol.to_json()
    assert expected["cot_apostrophe"] == "ascii" and expected["level_names"] == list(dm.level_names)
    eval_meta = VLLMEvaluator("Qwen/Qwen2.5-VL-7B-Instruct", answer="generate").run_meta(dm)
    write_lora_run_json(tmp_path, SimpleNamespace(pretrained="Qwen/Qwen2.5-VL-7B-Instruct", hparams={}), dm, tmp_path / "adapter")
    lora_meta = read_run_json(tmp_path)
    for meta in (eval_meta, lora_meta):
        assert {key: meta[key] for key in expected} == expected
        assert QuestionProtocol.from_json(meta) == dataclasses.replace(dm.protocol, context=None)
