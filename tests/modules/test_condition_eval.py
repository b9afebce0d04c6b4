"""Each question condition end to end on the tiny Qwen2.5-VL: the exact text the model was given,
how its replies were read and scored, and what run.json records."""

from __future__ import annotations

import json

import pytest
from lightning.pytorch import Trainer

from hiertrain.protocol import conditions
from hiertrain.protocol.answers import paper_letter
from hiertrain.base.errors import HierError
from hiertrain.protocol.open_set import OpenSetMatcher
from hiertrain.metrics.predictions import load_predictions
from hiertrain.protocol.prompts import LETTERS, SYSTEM_IMAGE
from hiertrain.taxonomy.taxonomy import Taxonomy
from hiertrain.datamodules.questions import HierVQADataModule
from hiertrain.modules.vllm_evaluator import VLLMEvaluator

ANSWER = "Answer with the option's letter from the given choices directly."


def run_condition(tiny, synth, root, condition, answer="generate", mode="image", **kwargs):
    model_kwargs = kwargs.pop("model_kwargs", {"max_new_tokens": 6})
    dm = HierVQADataModule(
        str(synth / "questions_random.jsonl"), taxonomy=str(synth / "taxonomy.json"), limit=2, mode=mode,
        condition=condition, **kwargs,
    )  # fmt: skip
    model = VLLMEvaluator(str(tiny), answer=answer, **model_kwargs)
    trainer = Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(root),
    )  # fmt: skip
    trainer.test(model, datamodule=dm, verbose=False)
    run = root / model.meta["run_name"]
    return model, dm, run, load_predictions(run / "predictions.jsonl")


def _asked(preds):
    return [lv for p in preds for lv in p.levels if lv.asked]


def test_taxonomy_in_context(tiny_qwen, synth_dir, tmp_path):
    model, dm, run, preds = run_condition(tiny_qwen, synth_dir, tmp_path, "taxonomy", answer="logits", batch_size=1)
    assert model.answerer.engine.global_prefills == 1 and model.answerer.engine.global_steps == 2  # 2 batches, 1 taxonomy prefill
    context = str(json.loads((synth_dir / "taxonomy.json").read_text()))  # the paper's str(json.load(f))
    item = dm.dataset()[0]
    assert item["levels"][0].messages[0]["content"][0]["text"] == "You are a helpful assistant. Here is a taxonomy: " + context
    rendered = model.prompts_of(item)[0]
    assert "You are a helpful assistant. Here is a taxonomy: " + context in rendered
    assert rendered.index("Here is a taxonomy") < rendered.index("<|vision_start|>")  # the taxonomy precedes the image
    for lv in _asked(preds):
        assert lv.question.endswith(f"{LETTERS[len(lv.options) - 1]}. {lv.options[-1]}{ANSWER}")
    meta = json.loads((run / "run.json").read_text())
    assert meta["condition"] == "taxonomy" and run.name.endswith("-taxonomy")


def test_cot_replies_are_read_for_their_final_letter(tiny_qwen, synth_dir, tmp_path):
    model, _, run, preds = run_condition(tiny_qwen, synth_dir, tmp_path, "cot", model_kwargs={"max_new_tokens": 12})
    for lv in _asked(preds):
        assert lv.question.endswith("\nLet\u2019s think step by step. " + ANSWER)
        index = conditions.final_letter(lv.reply, lv.options)
        assert lv.letter == (None if index is None else LETTERS[index])
    unparsed = sum(lv.letter is None for lv in _asked(preds)) / len(_asked(preds))
    assert model.final_metrics["unparseable_rate"] == pytest.approx(unparsed)
    meta = json.loads((run / "run.json").read_text())
    assert meta["condition"] == "cot" and meta["cot_apostrophe"] == "typographic" and meta["max_new_tokens"] == 12
    # the paper's parser stays the paper's first-letter-anywhere rule
    _, _, _, paper = run_condition(
        tiny_qwen, synth_dir, tmp_path / "paper", "cot", cot_apostrophe="ascii",
        model_kwargs={"max_new_tokens": 12, "answer_parser": "paper"},
    )  # fmt: skip
    for lv in _asked(paper):
        assert lv.question.endswith("\nLet's think step by step. " + ANSWER)
        index = paper_letter(lv.reply, len(lv.options))
        assert lv.letter == (None if index is None else LETTERS[index])


def test_bio_cot_replaces_the_system_prompt(tiny_qwen, synth_dir, tmp_path):
    model, dm, run, preds = run_condition(tiny_qwen, synth_dir, tmp_path, "bio_cot", answer="logits", subject="plant")
    item = dm.dataset()[0]
    assert item["levels"][0].messages[0]["content"][0]["text"] == conditions.BIO_COT_SYSTEM["plant"]
    assert SYSTEM_IMAGE not in model.prompts_of(item)[0]
    assert all(lv.question.endswith("\n" + ANSWER) for lv in _asked(preds))
    with pytest.raises(HierError, match="bio_cot"):
        HierVQADataModule(str(synth_dir / "questions_random.jsonl"), condition="bio_cot", subject="shape")


def test_binary_statements_one_question_per_option(tiny_qwen, synth_dir, tmp_path):
    model, dm, run, preds = run_condition(tiny_qwen, synth_dir, tmp_path, "binary", subject="shape")
    item = dm.dataset()[0]
    prompts = model.prompts_of(item)
    assert len(prompts) == sum(len(lq.options) for lq in item["levels"])  # one prompt per statement
    assert all(conditions.BINARY_SYSTEM in p for p in prompts)
    for lv in _asked(preds):
        statements = lv.detail["statements"]
        assert [s["option"] for s in statements] == lv.options
        for s in statements:
            assert s["question"] == f"The shape in the image belongs to the {lv.name} {s['option']}.\nIs this statement correct? Please answer Yes or No."
            assert s["value"] == conditions.binary_value(s["reply"])
        first_yes = next((s["option"] for s in statements if s["value"] == 1), None)
        assert lv.predicted == first_yes
        assert lv.correct == (first_yes is not None and first_yes.lower() == lv.truth.lower())
    hca = sum(all(lv.correct for lv in p.levels if lv.asked) for p in preds) / len(preds)
    assert model.final_metrics["hca"] == pytest.approx(hca)


def test_open_set_replies_are_matched_to_the_taxonomy(tiny_qwen, synth_dir, tmp_path):
    model, dm, run, preds = run_condition(tiny_qwen, synth_dir, tmp_path, "open", subject="shape")
    matcher = OpenSetMatcher.from_taxonomy(Taxonomy.from_json(synth_dir / "taxonomy.json"))
    for lv in _asked(preds):
        assert lv.options == [] and lv.letter is None
        assert lv.question == f"Based on taxonomy, what is the {lv.name} of the shape in this image?\nAnswer with the name only."
        found = matcher.match(lv.reply, lv.level - 1)
        assert (lv.detail["match"], lv.predicted) == (found.verdict, found.node)
        assert lv.detail["candidates"] == matcher.candidates(lv.level - 1)
    rates = model.final_metrics["open_set"]
    verdicts = [lv.detail["match"] for lv in _asked(preds)]
    assert rates["none_rate"] == pytest.approx(verdicts.count("none") / len(verdicts))
    chance = model.final_metrics["chance"]["per_level_accuracy"]
    assert chance[0] == pytest.approx(1 / matcher.candidates(0))  # uniform over the level's nodes
    assert "open_set" in json.loads((run / "metrics.json").read_text())


def test_text_mode_conditions(tiny_qwen, synth_dir, tmp_path):
    _, _, run, preds = run_condition(tiny_qwen, synth_dir, tmp_path, "open", mode="text")
    assert [lv.asked for lv in preds[0].levels] == [True, True, True, False]
    assert preds[0].levels[0].question.endswith("?\nAnswer with the name only.")
    _, _, _, cot = run_condition(tiny_qwen, synth_dir, tmp_path / "cot", "cot", mode="text")
    assert all("Let\u2019s think step by step. " in lv.question for lv in _asked(cot))
    with pytest.raises(HierError, match="image-only"):
        HierVQADataModule(str(synth_dir / "questions_random.jsonl"), mode="text", condition="binary")


def test_conditions_that_need_text_replies_refuse_logits(tiny_qwen, synth_dir, tmp_path):
    with pytest.raises(HierError, match="needs answer: generate"):
        run_condition(tiny_qwen, synth_dir, tmp_path, "open", answer="logits")
    with pytest.raises(HierError, match="needs the taxonomy"):
        HierVQADataModule(str(synth_dir / "questions_random.jsonl"), condition="open").setup()
    with pytest.raises(HierError, match="names the level"):
        HierVQADataModule(
            str(synth_dir / "questions_random.jsonl"), taxonomy=str(synth_dir / "taxonomy.json"),
            condition="open", prompt_family="food",
        ).setup()  # fmt: skip


def test_a_taxonomy_longer_than_the_context_is_refused_at_start(tiny_qwen, synth_dir, tmp_path):
    # issue 22 item 14: a 453,607-token taxonomy in a 32,768-token context ran > 10 min at 2.8 GB
    import shutil

    from transformers import AutoConfig, AutoTokenizer

    paths = json.loads((synth_dir / "taxonomy.json").read_text())
    for i in range(3000):  # made-up leaves beside the real ones: the records still resolve
        paths[f"extra leaf {i}"] = ["extra root", f"extra shape {i % 7}", f"extra colour {i % 50}", f"extra leaf {i}"]
    synth = tmp_path / "synth"
    synth.mkdir()
    (synth / "taxonomy.json").write_text(json.dumps(paths, indent=4))
    shutil.copy(synth_dir / "taxonomy.levels.json", synth / "taxonomy.levels.json")
    shutil.copy(synth_dir / "questions_random.jsonl", synth / "questions_random.jsonl")
    (synth / "images").symlink_to(synth_dir / "images")
    tokens = len(AutoTokenizer.from_pretrained(tiny_qwen)(str(paths), add_special_tokens=False)["input_ids"])
    limit = AutoConfig.from_pretrained(tiny_qwen).get_text_config().max_position_embeddings
    assert tokens > limit == 32768
    with pytest.raises(HierError) as err:
        run_condition(tiny_qwen, synth, tmp_path / "run", "taxonomy", answer="logits", batch_size=1)
    assert str(err.value) == (
        f"{synth / 'taxonomy.json'}: condition 'taxonomy' puts {tokens:,} tokens of taxonomy in every prompt, more than "
        f"the context of {tiny_qwen} ({limit:,} tokens, max_position_embeddings); use a smaller taxonomy"
    )
    assert not list((tmp_path / "run").rglob("predictions*.jsonl"))


@pytest.fixture
def terse_condition():
    """A condition registered by the test (a plain variant with another answer line), removed after."""

    @conditions.register
    class Terse(conditions.Plain):
        name = "terse"

        def question(self, prompt, options, cot_apostrophe="typographic"):
            return prompt + "\n" + conditions.lettered(options) + "\nReply with the letter only."

    yield Terse
    conditions.REGISTRY.pop("terse")


@pytest.mark.slow
def test_adding_a_condition_is_one_class(terse_condition, tiny_qwen, synth_dir, tmp_path):
    model, dm, run, preds = run_condition(tiny_qwen, synth_dir, tmp_path, "terse", answer="logits", batch_size=1)
    item = dm.dataset()[0]
    assert all(lq.question.endswith("\nReply with the letter only.") for lq in item["levels"])
    assert all("Reply with the letter only." in p and ANSWER not in p for p in model.prompts_of(item))
    asked = _asked(preds)
    assert asked and all(lv.question.endswith("\nReply with the letter only.") for lv in asked)
    assert all(lv.predicted in lv.options for lv in asked)  # scored by letter logits like plain
    assert json.loads((run / "run.json").read_text())["condition"] == "terse"
    assert "terse" in model.meta["run_name"]
