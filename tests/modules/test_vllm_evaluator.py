"""VLLMEvaluator under a real Trainer: predictions, skips, modes, batch-size invariance."""

from __future__ import annotations

import json
import shutil

import pytest
from lightning.pytorch import Trainer

from hiertrain.core.answers import parse_letter
from hiertrain.datamodules.questions import HierVQADataModule
from hiertrain.modules.vllm_evaluator import VLLMEvaluator
from hiertrain.core.predictions import load_predictions
from hiertrain.core.prompts import LETTERS


def evaluate(pretrained, questions, root, taxonomy=None, **data_kwargs):
    answer = data_kwargs.pop("answer", "logits")
    dm = HierVQADataModule(str(questions), taxonomy=taxonomy and str(taxonomy), **data_kwargs)
    model = VLLMEvaluator(str(pretrained), answer=answer, run_name="run")
    trainer = Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(root),
    )  # fmt: skip
    trainer.test(model, datamodule=dm, verbose=False)
    return model, root / "run"


def _consistent(preds):
    for p in preds:
        for lv in p.levels:
            if not lv.asked:
                continue
            if lv.letter is not None:
                assert lv.predicted == lv.options[LETTERS.index(lv.letter)]
            assert lv.correct == (lv.predicted == lv.truth)


def test_batch_size_does_not_change_predictions(tiny_qwen, synth_dir, tmp_path):
    q, tax = synth_dir / "questions_random.jsonl", synth_dir / "taxonomy.json"
    model, one = evaluate(tiny_qwen, q, tmp_path / "bs1", tax, limit=5, batch_size=1)
    _, eight = evaluate(tiny_qwen, q, tmp_path / "bs8", tax, limit=5, batch_size=8)
    assert (one / "predictions.jsonl").read_bytes() == (eight / "predictions.jsonl").read_bytes()
    assert (one / "metrics.json").read_bytes() == (eight / "metrics.json").read_bytes()
    preds = load_predictions(one / "predictions.jsonl")
    assert [p.id for p in preds] == [0, 1, 2, 3, 4]
    assert all(lv.asked and lv.reply == lv.letter for p in preds for lv in p.levels)
    _consistent(preds)
    assert model.final_metrics["num_samples"] == 5
    assert model.final_metrics["level_names"] == ["family", "shape", "colour", "texture"]
    # the letter in the file is the argmax of a plain full forward of that prompt
    dm = HierVQADataModule(str(q), taxonomy=str(tax), limit=1)
    item = dm.dataset()[0]
    answerer = model.answerer
    for lq, prompt, lv in zip(item["levels"], model.prompts_of(item), preds[0].levels):
        full = answerer.full_forward_logits(item["image"], prompt)
        assert LETTERS[int(answerer.letter_scores(full, len(lq.options)).argmax())] == lv.letter


def test_generate_mode_reads_letters_from_replies(tiny_qwen, synth_dir, tmp_path):
    model, run = evaluate(tiny_qwen, synth_dir / "questions_random.jsonl", tmp_path, limit=2, answer="generate")
    preds = load_predictions(run / "predictions.jsonl")
    asked = [lv for p in preds for lv in p.levels]
    assert all(isinstance(lv.reply, str) for lv in asked)
    for lv in asked:
        index = parse_letter(lv.reply, lv.options)
        assert lv.letter == (None if index is None else LETTERS[index])
    unparsed = sum(lv.letter is None for lv in asked) / len(asked)
    assert model.final_metrics["unparseable_rate"] == pytest.approx(unparsed)
    _consistent(preds)


def test_text_mode_does_not_ask_the_leaf(tiny_qwen, synth_dir, tmp_path):
    model, run = evaluate(tiny_qwen, synth_dir / "questions_random.jsonl", tmp_path, limit=3, mode="text")
    preds = load_predictions(run / "predictions.jsonl")
    assert all(p.mode == "text" for p in preds)
    assert [lv.asked for lv in preds[0].levels] == [True, True, True, False]
    assert model.final_metrics["per_level_accuracy"][3] is None
    assert json.loads((run / "run.json").read_text())["mode"] == "text"


def test_unreadable_image_is_a_counted_skip(tiny_qwen, synth_dir, tmp_path):
    lines = (synth_dir / "questions_random.jsonl").read_text().splitlines()[:3]
    records = [json.loads(line) for line in lines]
    shutil.copytree(synth_dir / "images", tmp_path / "images")
    (tmp_path / "images/broken.png").write_bytes(b"not an image")
    records[1]["image"] = "images/broken.png"
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in records))
    model, run = evaluate(tiny_qwen, questions, tmp_path / "out", batch_size=2)
    assert model.final_metrics["num_samples"] == 2 and model.final_metrics["num_skipped"] == 1
    assert [p.id for p in load_predictions(run / "predictions.jsonl")] == [0, 2]
    skipped = json.loads((run / "skipped.jsonl").read_text())
    assert skipped["id"] == 1 and "broken.png: cannot read image of sample 1" in skipped["reason"]
