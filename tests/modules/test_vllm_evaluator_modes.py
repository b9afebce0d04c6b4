"""VLLMEvaluator's circular evaluation and inference modes (issue 26): counting by a scripted
answerer, exactness of the cached paths against plain full forwards on the tiny model."""

from __future__ import annotations

import json
import re

import pytest
import torch

from hiertrain.protocol import prompts as prompts_module
from hiertrain.protocol.prompts import LETTERS
from hiertrain.datamodules.questions import HierVQADataModule
from hiertrain.answerers.hf import HFAnswerer
from hiertrain.modules.vllm_evaluator import VLLMEvaluator
from hiertrain.metrics.predictions import load_predictions



def evaluate(pretrained, questions, root, taxonomy=None, answer="logits", model_kwargs=None, **data_kwargs):
    from lightning.pytorch import Trainer

    dm = HierVQADataModule(str(questions), taxonomy=taxonomy and str(taxonomy), **data_kwargs)
    model = VLLMEvaluator(str(pretrained), answer=answer, run_name="run", **(model_kwargs or {}))
    trainer = Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(root),
    )  # fmt: skip
    trainer.test(model, datamodule=dm, verbose=False)
    return model, root / "run"


class _EchoProcessor:
    """A chat template that just writes the messages as JSON (the scripted answerer reads them)."""

    image_processor = object()

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return json.dumps(messages)


class _Scripted:
    """Knows the first level (picks the truth's letter wherever it is), answers "A" elsewhere."""

    def __init__(self, truth_of_first: dict[str, str]):
        self.truth_of_first = truth_of_first

    def logits(self, batch):
        out = []
        for item in batch:
            rows = []
            for prompt in item.prompts:
                text = json.loads(prompt)[-1]["content"][-1]["text"]
                options = re.findall(r"^[A-J]\. (.*)$", text, re.M)
                row = torch.zeros(len(LETTERS))
                first = "family" in text.splitlines()[0]  # "... fall in terms of family?"
                target = options.index(self.truth_of_first[item.image]) if first else 0
                row[target] = 1.0
                rows.append(row)
            out.append(torch.stack(rows))
        return out

    def letter_scores(self, row, n):
        return row[:n]


def test_circular_counting_with_a_scripted_answerer(synth_dir):
    dm = HierVQADataModule(str(synth_dir / "questions_random.jsonl"), taxonomy=str(synth_dir / "taxonomy.json"), limit=6,
                           circular=True, mode="text")  # fmt: skip
    items = [dm.dataset()[i] for i in range(6)]
    for item in items:
        item["image"] = f"img{item['sample_id']}"  # text mode: the scripted answerer keys on this
    model = VLLMEvaluator("unused")
    model.answerer = HFAnswerer(_Scripted({item["image"]: item["levels"][0].truth for item in items}), _EchoProcessor(), dm.protocol)
    preds = model.answer_items(items, "text")
    for item, pred in zip(items, preds):
        asked = [lv for lv in pred.levels if lv.asked]
        assert len(asked) == len(item["levels"]) == 3  # text mode: the leaf is not asked
        for lq, lv in zip(item["levels"], asked):
            rotations = lv.detail["rotations"]
            assert len(rotations) == len(lq.options)  # every rotation asked
            if lq.level == 0:  # knows it: right under every rotation
                assert lv.correct and all(r["correct"] for r in rotations)
            else:  # always "A": right only in the rotation where the truth is first
                assert [r["correct"] for r in rotations] == [r["options"][0] == lq.truth for r in rotations]
                assert lv.correct == (len(lq.options) == 1)
                assert lv.letter == "A" and lv.predicted == lq.options[0]  # rotation 0's answer kept
    from hiertrain.metrics.circular import circular_metrics

    out = circular_metrics(preds, 4)["circular"]
    n = len(items)
    assert out["first_rotation"]["per_level_accuracy"][0] == 1.0
    for k in (1, 2):
        hand = sum(item["levels"][k].options[0] == item["levels"][k].truth for item in items) / n
        assert out["first_rotation"]["per_level_accuracy"][k] == pytest.approx(hand)
    picks = out["letter_bias"]["pick_counts"]
    # level 1: each of its 2 rotations picks the truth's letter (A once, B once); levels 2, 3: "A" always
    assert picks[0] == n * (1 + len(items[0]["levels"][1].options) + len(items[0]["levels"][2].options))
    assert sum(picks) == sum(len(lq.options) for item in items for lq in item["levels"])


def test_circular_rotations_equal_separate_full_forwards(tiny_qwen, synth_dir, tmp_path):
    q, tax = synth_dir / "questions_random.jsonl", synth_dir / "taxonomy.json"
    model, run = evaluate(tiny_qwen, q, tmp_path, tax, limit=2, batch_size=2, circular=True)
    meta = json.loads((run / "run.json").read_text())
    assert meta["circular"] is True and meta["inference"] == "independent"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["circular"]) == {"rotations", "first_rotation", "letter_bias"}
    from hiertrain.cli.main import main

    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["score", str(run / "predictions.jsonl"), "--json"]) == 0
    scored = json.loads(out.getvalue())
    assert scored["circular"] == metrics["circular"]  # recomputed from the rotations' picks alone
    assert scored["hca"] == metrics["hca"]
    preds = load_predictions(run / "predictions.jsonl")
    dm = HierVQADataModule(str(q), taxonomy=str(tax), limit=1, circular=True)
    item = dm.dataset()[0]
    prompts = model.prompts_of(item)
    assert len(prompts) == sum(len(lq.options) for lq in item["levels"])  # each level x its rotations
    from hiertrain.vlm.prefix_cache import ImagePrompts

    shared = model.answerer.engine.logits([ImagePrompts(item["image"], prompts)])[0]
    records = [r for lv in preds[0].levels for r in lv.detail["rotations"]]
    for prompt, row, record in zip(prompts, shared, records, strict=True):
        full = model.answerer.engine.full_forward_logits(item["image"], prompt)
        assert (full - row).abs().max().item() < 1e-4
        assert LETTERS[int(model.answerer.engine.letter_scores(full, len(record["options"])).argmax())] == record["letter"]


def _full_letter(answerer, image, prompt, n):
    return LETTERS[int(answerer.letter_scores(answerer.full_forward_logits(image, prompt), n).argmax())]


def test_oracle_parent_letters_are_full_forwards_of_the_oracle_chat(tiny_qwen, synth_dir, tmp_path):
    q, tax = synth_dir / "questions_random.jsonl", synth_dir / "taxonomy.json"
    model, run = evaluate(tiny_qwen, q, tmp_path, tax, limit=2, batch_size=2, inference="oracle_parent")
    assert json.loads((run / "run.json").read_text())["inference"] == "oracle_parent"
    preds = load_predictions(run / "predictions.jsonl")
    item = HierVQADataModule(str(q), taxonomy=str(tax), limit=1, inference="oracle_parent").dataset()[0]
    prompts = model.prompts_of(item)
    assert prompts[2].count("<|im_start|>assistant\n") == 3  # two earlier answered turns, then the question
    for lq, prompt, lv in zip(item["levels"], prompts, preds[0].levels, strict=True):
        assert lv.letter == _full_letter(model.answerer.engine, item["image"], prompt, len(lq.options))


def test_stepwise_run_answers_each_turn_after_its_own_replies(tiny_qwen, synth_dir, tmp_path):
    from hiertrain.protocol.conditions import turn_messages
    from hiertrain.vlm.prefix_cache import render_chat

    q, tax = synth_dir / "questions_random.jsonl", synth_dir / "taxonomy.json"
    model, run = evaluate(tiny_qwen, q, tmp_path, tax, limit=3, batch_size=3, inference="stepwise")
    preds = load_predictions(run / "predictions.jsonl")
    dm = HierVQADataModule(str(q), taxonomy=str(tax), limit=3, inference="stepwise")
    for item, pred in zip([dm.dataset()[i] for i in range(3)], preds):
        levels, replies = item["levels"], []
        for k, (lq, lv) in enumerate(zip(levels, pred.levels, strict=True)):
            chat = turn_messages(levels[0].messages, [x.question for x in levels[1 : k + 1]], replies)
            assert lv.letter == _full_letter(model.answerer.engine, item["image"], render_chat(model.processor, chat), len(lq.options))
            replies.append(lv.letter)


def test_joint_run_reads_one_letter_per_level_and_counts_the_rest_unparsed(tiny_qwen, synth_dir, tmp_path):
    from hiertrain.protocol.answers import joint_letters

    q, tax = synth_dir / "questions_random.jsonl", synth_dir / "taxonomy.json"
    with pytest.raises(Exception, match="needs answer: generate"):
        evaluate(tiny_qwen, q, tmp_path / "logits", tax, limit=1, inference="joint")
    model, run = evaluate(tiny_qwen, q, tmp_path, tax, limit=2, answer="generate", inference="joint",
                          model_kwargs={"max_new_tokens": 12})  # fmt: skip
    preds = load_predictions(run / "predictions.jsonl")
    for pred in preds:
        (reply,) = {lv.reply for lv in pred.levels}  # one reply to one question
        (question,) = {lv.question for lv in pred.levels}
        assert question.endswith(prompts_module.JOINT_INSTRUCTION)
        picks = joint_letters(reply, [lv.name for lv in pred.levels], [lv.options for lv in pred.levels])
        assert [lv.letter for lv in pred.levels] == [None if i is None else LETTERS[i] for i in picks]
    unparsed = sum(lv.letter is None for p in preds for lv in p.levels) / sum(len(p.levels) for p in preds)
    assert model.final_metrics["unparseable_rate"] == pytest.approx(unparsed)
