"""Stepwise inference must equal a plain full forward (and HF generate) of each whole turn."""

from __future__ import annotations

import pytest
from PIL import Image

from hiertrain.protocol import conditions
from hiertrain.protocol import prompts
from hiertrain.vlm.loading import load_vllm
from hiertrain.vlm.prefix_cache import SharedPrefixAnswerer, render_chat
from hiertrain.vlm.stepwise import Conversation, StepwiseAnswerer

NAMES = ["family", "shape", "colour"]
OPTIONS = [["round", "angular"], ["circle", "square", "triangle", "ellipse"], ["red circle", "blue square", "green star"]]


@pytest.fixture(scope="module")
def qwen(tiny_qwen):
    model, processor = load_vllm(str(tiny_qwen), "float32")
    return SharedPrefixAnswerer(model, processor, max_new_tokens=4)


def _conversation(processor, image, mode: str, turns: int) -> Conversation:
    label = "red solid circle"
    questions = [
        prompts.question_text(
            prompts.image_prompt(0, NAMES[k], "shape") if mode == "image" else prompts.text_prompt(0, NAMES[k], label), OPTIONS[k]
        )
        for k in range(turns)
    ]
    first = conditions.messages(questions[0], mode, None)

    def render(replies):
        return render_chat(processor, conditions.turn_messages(first, questions[1 : len(replies) + 1], replies))

    return Conversation(image, render, [len(o) for o in OPTIONS[:turns]])


def _images():
    return [Image.new("RGB", (448, 448), (200, 30, 30)), Image.new("RGB", (320, 448), (20, 30, 220))]


@pytest.mark.parametrize("mode", ["image", "text"])
def test_each_turn_equals_a_full_forward_of_the_whole_turn(qwen, mode):
    images = _images() if mode == "image" else [None, None]
    convs = [_conversation(qwen.processor, img, mode, n) for img, n in zip(images, (3, 2))]  # ragged turns
    out = StepwiseAnswerer(qwen).run(convs, generate=False)
    assert [len(t) for t in out] == [3, 2]
    for conv, turns in zip(convs, out):
        replies: list[str] = []
        for k, turn in enumerate(turns):
            prompt = conv.render(replies)
            full = qwen.full_forward_logits(conv.image, prompt)
            assert (full - turn.logits).abs().max().item() < 1e-4
            assert turn.reply == "ABCD"[int(qwen.letter_scores(full, conv.options[k]).argmax())]
            replies.append(turn.reply)
        if len(turns) > 1:  # the later turn really holds the earlier answer
            assert f"<|im_start|>assistant\n{replies[0]}<|im_end|>" in conv.render(replies[:1])


def test_each_generated_turn_equals_hf_generate(qwen):
    convs = [_conversation(qwen.processor, img, "image", 3) for img in _images()]
    out = StepwiseAnswerer(qwen).run(convs, generate=True)
    for conv, turns in zip(convs, out):
        replies: list[str] = []
        for turn in turns:
            assert turn.reply == qwen.full_generate(conv.image, conv.render(replies))
            replies.append(turn.reply)
