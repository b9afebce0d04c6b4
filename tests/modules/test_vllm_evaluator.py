"""VLLMEvaluator under a real Trainer: predictions, skips, modes, batch-size invariance."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from lightning.pytorch import Trainer

from hiertrain.protocol.answers import parse_letter
from hiertrain.base.errors import HierError
from hiertrain.datamodules.questions import HierVQADataModule
from hiertrain.answerers.hf import HFAnswerer
from hiertrain.modules.vllm_evaluator import VLLMEvaluator
from hiertrain.metrics.predictions import load_predictions
from hiertrain.protocol.prompts import LETTERS


def evaluate(pretrained, questions, root, taxonomy=None, **data_kwargs):
    answer = data_kwargs.pop("answer", "logits")
    model_kwargs = data_kwargs.pop("model_kwargs", {})
    dm = HierVQADataModule(str(questions), taxonomy=taxonomy and str(taxonomy), **data_kwargs)
    model = VLLMEvaluator(str(pretrained), answer=answer, run_name="run", **model_kwargs)
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


@pytest.mark.slow
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
    answerer = model.answerer.engine
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


def _with_strip_image(synth_dir, tmp_path, index: int = 1):
    """The first 3 question records, record `index` showing a 6000x20 strip (aspect ratio 300)."""
    from PIL import Image

    records = [json.loads(line) for line in (synth_dir / "questions_random.jsonl").read_text().splitlines()[:3]]
    shutil.copytree(synth_dir / "images", tmp_path / "images")
    Image.new("RGB", (6000, 20), (200, 30, 30)).save(tmp_path / "images/strip.png")
    records[index]["image"] = "images/strip.png"
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in records))
    return questions


def test_an_image_the_processor_refuses_is_a_named_counted_skip(tiny_qwen, synth_dir, tmp_path):
    # issue 22 item 6: "ValueError: absolute aspect ratio must be smaller than 200" killed the run on every rerun
    questions = _with_strip_image(synth_dir, tmp_path)
    model, run = evaluate(tiny_qwen, questions, tmp_path / "out", batch_size=2)
    assert model.final_metrics["num_samples"] == 2 and model.final_metrics["num_skipped"] == 1
    assert [p.id for p in load_predictions(run / "predictions.jsonl")] == [0, 2]
    skipped = json.loads((run / "skipped.jsonl").read_text())
    assert skipped["id"] == 1 and skipped["reason"].startswith(
        f"{tmp_path / 'images/strip.png'}: cannot read image of sample 1 for this model (ValueError: absolute aspect ratio must be smaller than 200"
    )
    with pytest.raises(HierError, match="strip.png: cannot read image of sample 1 for this model"):
        evaluate(tiny_qwen, questions, tmp_path / "strict", batch_size=2, on_bad_image="error")


def test_paper_protocol_settings_parser_and_asked_text_are_recorded(tiny_qwen, synth_dir, tmp_path):
    from hiertrain.protocol.answers import paper_letter

    settings = {"answer_parser": "paper", "max_new_tokens": 10, "max_image_side": 300,
                "processor_kwargs": {"size": {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 128}}}  # fmt: skip
    model, run = evaluate(
        tiny_qwen, synth_dir / "questions_random.jsonl", tmp_path, limit=2, answer="generate",
        prompt_family="inat", prompt_variant=1, subject="shape", model_kwargs=settings,
    )  # fmt: skip
    meta = json.loads((run / "run.json").read_text())
    assert {k: meta[k] for k in settings} == settings
    assert meta["prompt_family"] == "inat" and meta["image_aspect_ratio"] is None
    assert model.processor.image_processor.size["longest_edge"] == 28 * 28 * 128
    preds = load_predictions(run / "predictions.jsonl")
    for lv in (lv for p in preds for lv in p.levels):
        index = paper_letter(lv.reply, len(lv.options))
        assert lv.letter == (None if index is None else LETTERS[index])
        assert lv.question.startswith(f"Given the shape in the image, what is its taxonomic classification at the {lv.name} level?\nA. ")
        assert lv.question.endswith("\nAnswer with the option's letter from the given choices directly.")


def test_shrink_longest_side_is_the_papers_lanczos_cap():
    from PIL import Image

    from hiertrain.modules.vllm_evaluator import shrink_longest_side

    big = Image.new("RGB", (2000, 1001), (1, 2, 3))
    assert shrink_longest_side(big, 1680).size == (1680, int(1001 * 1680 / 2000))
    small = Image.new("RGB", (1680, 900))
    assert shrink_longest_side(small, 1680) is small and shrink_longest_side(big, None) is big


def test_bad_protocol_settings_are_one_line_errors():
    from hiertrain.base.errors import HierError

    with pytest.raises(HierError, match="answer_parser 'loose'"):
        VLLMEvaluator("x", answer_parser="loose")
    with pytest.raises(HierError, match="image_aspect_ratio 'anyres'"):
        VLLMEvaluator("x", image_aspect_ratio="anyres")


def test_llava_pad_setting_runs_end_to_end(tiny_llava, synth_dir, tmp_path):
    from hiertrain.vlm.padded_tile import PaddedTileProcessor

    model, run = evaluate(tiny_llava, synth_dir / "questions_random.jsonl", tmp_path, limit=2,
                          model_kwargs={"image_aspect_ratio": "pad"})  # fmt: skip
    assert isinstance(model.answerer.engine.processor, PaddedTileProcessor)
    assert json.loads((run / "run.json").read_text())["image_aspect_ratio"] == "pad"
    assert [p.id for p in load_predictions(run / "predictions.jsonl")] == [0, 1]


def test_max_batch_tokens_reaches_the_answerer(tiny_qwen):
    from hiertrain.vlm.prefix_cache import default_max_batch_tokens

    one = VLLMEvaluator(str(tiny_qwen), max_batch_tokens=1)
    one.configure_model()
    assert one.answerer.engine.max_batch_tokens == 1
    default = VLLMEvaluator(str(tiny_qwen))
    default.configure_model()
    assert default.answerer.engine.max_batch_tokens == default_max_batch_tokens("cpu") > 1


# ---- system prompt and chat mode (protocol data) ---------------------------------------------------

# The paper's InternVL path: model.chat -> conversation template "internvl2_5" (OpenGVLab/InternVL
# internvl_chat/internvl/conversation.py:393-402), SeparatorStyle.MPT: system_template.format(...) + sep,
# then role + message + sep per turn, the open assistant role last; '<image>\n' + question
# (modeling_internvl_chat.py:347-348).
INTERNVL_SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"


def _model_chat_query(question: str) -> str:
    sep = "<|im_end|>\n"
    return f"<|im_start|>system\n{INTERNVL_SYSTEM}{sep}<|im_start|>user\n<image>\n{question}{sep}<|im_start|>assistant\n"


def test_internvl_model_default_renders_the_papers_system_message(tiny_internvl, synth_dir, tmp_path):
    model, run = evaluate(
        tiny_internvl, synth_dir / "questions_random.jsonl", tmp_path, limit=1, answer="generate",
        model_kwargs={"system_prompt": "model_default"},
    )  # fmt: skip
    meta = json.loads((run / "run.json").read_text())
    assert meta["system_prompt"] == "model_default" and meta["system_text"] == INTERNVL_SYSTEM and meta["chat"] is True
    dm = HierVQADataModule(str(synth_dir / "questions_random.jsonl"), limit=1)
    dm.setup()
    item = dm.dataset()[0]
    rendered = model.prompts_of(item)
    # the -hf template's image placeholder is <IMG_CONTEXT>, model.chat's <image>: both expand to <img>...</img>
    assert [p.replace("<IMG_CONTEXT>", "<image>") for p in rendered] == [_model_chat_query(lq.question) for lq in item["levels"]]
    paper = HFAnswerer(None, model.processor, dm.protocol)  # the default: hiertrain's (the paper's Qwen scripts') system prompt
    assert all("You are an expert in hierarchical image classification" in p for p in paper.prompts(item))


def test_system_prompt_is_part_of_the_run_identity(tiny_qwen, synth_dir, tmp_path):
    from hiertrain.base.errors import HierError

    evaluate(tiny_qwen, synth_dir / "questions_random.jsonl", tmp_path, limit=1)
    with pytest.raises(HierError, match=r"another system_prompt \('paper', this run 'none'\)"):
        evaluate(tiny_qwen, synth_dir / "questions_random.jsonl", tmp_path, limit=1, model_kwargs={"system_prompt": "none"})
    with pytest.raises(HierError, match="system_prompt 'model-default' is not one of"):
        VLLMEvaluator(str(tiny_qwen), system_prompt="model-default")


def test_chat_false_sends_the_papers_raw_base_llm_prompt(tiny_qwen, synth_dir, tmp_path):
    from hiertrain.base.errors import HierError

    model, run = evaluate(
        tiny_qwen, synth_dir / "questions_random.jsonl", tmp_path, limit=2, mode="text", answer="generate",
        model_kwargs={"chat": False},
    )  # fmt: skip
    meta = json.loads((run / "run.json").read_text())
    assert meta["chat"] is False and meta["system_text"] is None
    dm = HierVQADataModule(str(synth_dir / "questions_random.jsonl"), limit=1, mode="text")
    dm.setup()
    item = dm.dataset()[0]
    assert model.prompts_of(item) == [lq.question + " Answer:" for lq in item["levels"]]  # eval_text_og_natural.py:168-169
    preds = load_predictions(run / "predictions.jsonl")
    assert sum(lv.asked for p in preds for lv in p.levels) > 0
    with pytest.raises(HierError, match="plain text-mode questions only"):
        evaluate(tiny_qwen, synth_dir / "questions_random.jsonl", tmp_path / "img", limit=1, model_kwargs={"chat": False})


def test_hf_lines_carry_the_digest_of_the_templated_chat_text(tiny_qwen, synth_dir, tmp_path):
    """The HF request digest covers `prompts_of` (chat template + system turn): another system
    prompt is another digest, the same run the same digest."""
    model, run = evaluate(tiny_qwen, synth_dir / "questions_random.jsonl", tmp_path, limit=1)
    preds = load_predictions(run / "predictions.jsonl")
    item = model._datamodule().dataset()[0]
    assert preds[0].request == model.sample_request(item)
    assert model.request_texts(item) == model.prompts_of(item) and "system" in model.request_texts(item)[0]
    model.answerer.settings = dataclasses.replace(model.answerer.settings, system_prompt="none")
    assert model.sample_request(item) != preds[0].request
