"""Prefix sharing must be an optimisation only: same letter logits and replies as plain runs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from hiertrain.protocol import prompts
from hiertrain.base.errors import HierError
from hiertrain.vlm.loading import load_vllm
from hiertrain.vlm.prefix_cache import ImagePrompts, SharedPrefixAnswerer, render_chat

NAMES = ["family", "shape", "colour", "texture"]
OPTIONS = [["round", "angular"], ["circle", "square", "triangle", "ellipse"], ["red circle", "blue square", "green star"]]


def _prompts(processor, mode: str, label: str = "red solid circle", levels: int = 4) -> list[str]:
    out = []
    for i in range(levels):
        prompt = prompts.image_prompt(0, NAMES[i], "shape") if mode == "image" else prompts.text_prompt(0, NAMES[i], label)
        question = prompts.question_text(prompt, OPTIONS[i % len(OPTIONS)])
        out.append(render_chat(processor, prompts.chat_messages(question, mode)))
    return out


@pytest.fixture(scope="module")
def qwen(tiny_qwen):
    model, processor = load_vllm(str(tiny_qwen), "float32")
    return SharedPrefixAnswerer(model, processor)


def _images():
    return [Image.new("RGB", (448, 448), (200, 30, 30)), Image.new("RGB", (448, 448), (20, 30, 220))]


@pytest.mark.parametrize("mode", ["image", "text"])
def test_shared_prefix_logits_equal_full_forward(qwen, mode):
    images = _images() if mode == "image" else [None, None]
    items = [ImagePrompts(img, _prompts(qwen.processor, mode, label)) for img, label in zip(images, ["red a", "blue b"])]
    shared = qwen.logits(items)
    for item, rows in zip(items, shared):
        assert rows.shape[0] == len(item.prompts)
        for prompt, row in zip(item.prompts, rows):
            full = qwen.full_forward_logits(item.image, prompt)
            assert (full - row).abs().max().item() < 1e-4
            assert int(qwen.letter_scores(full, 4).argmax()) == int(qwen.letter_scores(row, 4).argmax())


def test_batching_does_not_change_answers(qwen):
    items = [ImagePrompts(img, _prompts(qwen.processor, "image")) for img in _images()]
    together = qwen.logits(items)
    alone = [qwen.logits([item])[0] for item in items]
    for a, b in zip(together, alone):
        assert torch.equal(a.argmax(-1), b.argmax(-1))
        assert (a - b).abs().max().item() < 1e-4


def test_rope_state_is_cleared_between_images(qwen):
    items = [ImagePrompts(_images()[0], _prompts(qwen.processor, "image", levels=2))]
    first = qwen.logits(items)[0]
    assert qwen.model.model.rope_deltas is None
    qwen.model.model.rope_deltas = torch.tensor([[12345]])  # stale state from some other call
    again = qwen.logits(items)[0]
    assert (first - again).abs().max().item() < 1e-5


@pytest.mark.parametrize("mode", ["image", "text"])
def test_shared_prefix_generate_equals_hf_generate(qwen, mode):
    image = _images()[1] if mode == "image" else None
    item = ImagePrompts(image, _prompts(qwen.processor, mode, levels=3))
    replies = qwen.generate([item])[0]
    assert replies == [qwen.full_generate(image, p) for p in item.prompts]


def test_llava_onevision_prefix_matches_full_forward(tiny_llava):
    model, processor = load_vllm(str(tiny_llava), "float32")
    answerer = SharedPrefixAnswerer(model, processor)
    item = ImagePrompts(Image.new("RGB", (64, 48), (10, 200, 10)), _prompts(processor, "image", levels=2))
    rows = answerer.logits([item])[0]
    for prompt, row in zip(item.prompts, rows):
        assert (answerer.full_forward_logits(item.image, prompt) - row).abs().max().item() < 1e-4


def test_split_point_is_after_the_image(qwen):
    texts = _prompts(qwen.processor, "image")
    cut = qwen.split_point(texts)
    assert texts[0][:cut].endswith("<|vision_end|>")
    assert all(t[:cut] == texts[0][:cut] for t in texts)


class _MultiTokenLetters:
    name_or_path = "fake-tokenizer"
    added_tokens_decoder: dict = {}
    eos_token_id = 0
    pad_token_id = 0

    def encode(self, text, add_special_tokens=False):
        return [1, 2]  # every letter is two tokens


def test_letter_that_is_not_one_token_is_an_error():
    model = torch.nn.Linear(1, 1)
    model.config = SimpleNamespace(model_type="qwen2")  # the answerer asks the model's family
    answerer = SharedPrefixAnswerer(model, _MultiTokenLetters())
    with pytest.raises(HierError, match="not a single token"):
        answerer.letter_ids("A")


@pytest.fixture(scope="module")
def qwen_penalised(tiny_qwen, tmp_path_factory):
    """The tiny Qwen with the real Qwen2.5-VL-7B-Instruct's generation extras in its
    generation_config.json (repetition_penalty 1.05, sampling flags that do_sample=False overrides)."""
    import json
    import shutil

    path = tmp_path_factory.mktemp("tiny_qwen_penalised") / "model"
    shutil.copytree(tiny_qwen, path)
    config_path = path / "generation_config.json"
    config = json.loads(config_path.read_text())
    config.update(repetition_penalty=1.05, do_sample=True, temperature=1e-6, top_k=1, top_p=0.001)
    config_path.write_text(json.dumps(config))
    model, processor = load_vllm(str(path), "float32")
    assert model.generation_config.repetition_penalty == 1.05
    return SharedPrefixAnswerer(model, processor, max_new_tokens=10)


@pytest.mark.parametrize("mode", ["image", "text"])
def test_shared_prefix_generate_keeps_the_checkpoints_generation_config(qwen_penalised, mode):
    answerer = qwen_penalised
    images = _images() if mode == "image" else [None, None]
    items = [ImagePrompts(img, _prompts(answerer.processor, mode, label)) for img, label in zip(images, ["red a", "blue b"])]
    shared = answerer.generate(items)
    for item, replies in zip(items, shared):
        assert replies == [answerer.full_generate(item.image, p) for p in item.prompts]  # question by question


def test_the_repetition_penalty_changes_replies(qwen_penalised):
    """The test above could fail: without the checkpoint's processors the replies differ."""
    from transformers import LogitsProcessorList

    answerer = qwen_penalised
    items = [ImagePrompts(img, _prompts(answerer.processor, "image")) for img in _images()]
    with_penalty = answerer.generate(items)
    plain = SharedPrefixAnswerer(answerer.model, answerer.processor, max_new_tokens=10)
    plain.generation_processors = lambda ids: LogitsProcessorList()  # greedy argmax, no penalty
    assert plain.generate(items) != with_penalty


# ---- several images per step: mixed sizes (CUB-like aspect ratios, small for speed) ----------

MIXED = [(120, 80), (84, 112), (112, 84), (98, 98)]


def _mixed_items(processor, levels=(2, 3, 4, 3)):
    colours = [(200, 30, 30), (20, 30, 220), (30, 180, 40), (120, 120, 20)]
    return [
        ImagePrompts(Image.new("RGB", size, colour), _prompts(processor, "image", levels=n))
        for size, colour, n in zip(MIXED, colours, levels)
    ]


def test_mixed_sizes_run_in_one_padded_step(qwen):
    items = _mixed_items(qwen.processor)
    prepared = qwen._prepare(items)
    assert len({p.length for p in prepared}) > 1  # different visual-token counts: prefixes are padded
    # the packing's estimate (from the image size, before processing) is the processor's length
    assert [qwen._process([p.prefix], [p.image])["input_ids"].shape[1] for p in prepared] == [p.length for p in prepared]
    assert qwen.chunks(prepared) == [sorted(range(len(items)), key=lambda i: prepared[i].length)]


def test_mixed_sizes_logits_equal_full_forward(qwen):
    items = _mixed_items(qwen.processor)
    for item, rows in zip(items, qwen.logits(items)):
        assert rows.shape[0] == len(item.prompts)
        for prompt, row in zip(item.prompts, rows):
            full = qwen.full_forward_logits(item.image, prompt)
            assert (full - row).abs().max().item() < 1e-4
            assert int(qwen.letter_scores(full, 4).argmax()) == int(qwen.letter_scores(row, 4).argmax())
    assert qwen.model.model.rope_deltas is None


def test_batched_path_equals_per_image_path(qwen):
    items = _mixed_items(qwen.processor)
    per_image = SharedPrefixAnswerer(qwen.model, qwen.processor, max_batch_tokens=1)
    steps = per_image.chunks(per_image._prepare(items))
    assert sorted(steps) == [[i] for i in range(len(items))]  # one image per step: the per-image path
    alone, together = per_image.logits(items), qwen.logits(items)
    for a, b in zip(alone, together):
        assert torch.equal(a.argmax(-1), b.argmax(-1))
        assert (a - b).abs().max().item() < 1e-4


def test_mixed_sizes_generate_equals_hf_generate(qwen):
    items = _mixed_items(qwen.processor, levels=(2, 1, 2, 1))
    replies = qwen.generate(items)
    assert replies == [[qwen.full_generate(item.image, p) for p in item.prompts] for item in items]


def test_token_budget_splits_steps(qwen):
    items = _mixed_items(qwen.processor)
    prepared = qwen._prepare(items)
    one_image = max(len(p.suffixes) * (p.length + max(map(len, p.suffixes))) for p in prepared)
    small = SharedPrefixAnswerer(qwen.model, qwen.processor, max_batch_tokens=2 * one_image)
    steps = small.chunks(prepared)
    assert sorted(i for step in steps for i in step) == list(range(len(items)))
    assert 1 < len(steps) < len(items)
    for step in steps:
        rows = sum(len(prepared[i].suffixes) for i in step)
        width = max(prepared[i].length for i in step) + max(len(s) for i in step for s in prepared[i].suffixes)
        assert len(step) == 1 or rows * width <= 2 * one_image
    grouped = SharedPrefixAnswerer(qwen.model, qwen.processor, pad_prefixes=False)
    assert all(len({prepared[i].length for i in step}) == 1 for step in grouped.chunks(prepared))
    for a, b in zip(small.logits(items), grouped.logits(items)):
        assert (a - b).abs().max().item() < 1e-4


def test_text_and_image_items_share_a_call(qwen):
    items = [_mixed_items(qwen.processor)[0], ImagePrompts(None, _prompts(qwen.processor, "text", levels=2))]
    for item, rows in zip(items, qwen.logits(items)):
        for prompt, row in zip(item.prompts, rows):
            assert (qwen.full_forward_logits(item.image, prompt) - row).abs().max().item() < 1e-4


def test_budget_below_one_is_an_error(qwen):
    with pytest.raises(HierError, match="max_batch_tokens"):
        SharedPrefixAnswerer(qwen.model, qwen.processor, max_batch_tokens=0)


def test_llava_onevision_mixed_sizes_in_one_step(tiny_llava):
    model, processor = load_vllm(str(tiny_llava), "float32")
    answerer = SharedPrefixAnswerer(model, processor)
    items = [
        ImagePrompts(Image.new("RGB", size, colour), _prompts(processor, "image", levels=2))
        for size, colour in (((64, 48), (10, 200, 10)), ((40, 72), (200, 10, 10)))
    ]
    prepared = answerer._prepare(items)
    assert prepared[0].length != prepared[1].length and len(answerer.chunks(prepared)) == 1
    assert [answerer._process([p.prefix], [p.image])["input_ids"].shape[1] for p in prepared] == [p.length for p in prepared]
    for item, rows in zip(items, answerer.logits(items)):
        for prompt, row in zip(item.prompts, rows):
            assert (answerer.full_forward_logits(item.image, prompt) - row).abs().max().item() < 1e-4


# ---- suffix groups: short and long suffixes in separate forwards ----------------------------


def test_suffix_groups_partition_by_length(qwen):
    lengths = [39] * 8 + [61, 99, 72, 98, 65, 99, 70, 96] * 6
    groups = qwen.suffix_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert len(groups) > 1  # 8 rows of 39 padded to 99 would waste more than a forward costs
    for a, b in zip(groups, groups[1:]):
        assert max(lengths[i] for i in a) < min(lengths[i] for i in b)  # contiguous in length order
    assert qwen.suffix_groups([50] * 20) == [list(range(20))]  # equal lengths: one forward


def test_suffix_groups_keep_answers_exact(qwen, monkeypatch):
    from hiertrain.vlm import prefix_cache

    items = _mixed_items(qwen.processor, levels=(2, 3, 4, 3))
    one = qwen.logits(items)
    monkeypatch.setattr(prefix_cache, "SUFFIX_FORWARD_TOKENS", 0)  # every distinct length its own forward
    prepared = qwen._prepare(items)
    lengths = [len(s) for p in prepared for s in p.suffixes]
    assert len(qwen.suffix_groups(lengths)) == len(set(lengths)) > 1
    split = qwen.logits(items)
    for item, a, b in zip(items, one, split):
        assert (a - b).abs().max().item() < 1e-4
        for prompt, row in zip(item.prompts, b):
            assert (qwen.full_forward_logits(item.image, prompt) - row).abs().max().item() < 1e-4
    replies = qwen.generate(items[:2])
    assert replies == [[qwen.full_generate(item.image, p) for p in item.prompts] for item in items[:2]]


def test_a_split_that_changes_tokens_is_refused(qwen):
    texts = _prompts(qwen.processor, "image", levels=2)
    cut = texts[0].index("Based on") + len("Bas")  # inside a word: "Bas" + "ed" is not how "Based" tokenizes
    with pytest.raises(HierError, match="does not tokenize the same when split"):
        qwen.check_splits([(texts, cut)])
