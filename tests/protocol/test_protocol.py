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
