"""LLaVA-OneVision `image_aspect_ratio: pad`: one padded tile per image, as the port's multi-image path."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from hiertrain.protocol import prompts
from hiertrain.base.errors import HierError
from hiertrain.vlm.loading import load_vllm
from hiertrain.vlm.padded_tile import PaddedTileProcessor
from hiertrain.vlm.prefix_cache import ImagePrompts, SharedPrefixAnswerer, render_chat


@pytest.fixture(scope="module")
def llava(tiny_llava):
    return load_vllm(str(tiny_llava), "float32")


def _prompts(processor, levels: int = 2) -> list[str]:
    out = []
    for i, name in enumerate(["family", "shape"][:levels]):
        question = prompts.question_text(prompts.image_prompt(0, name, "shape"), ["circle", "square", "star"])
        out.append(render_chat(processor, prompts.chat_messages(question, "image")))
    return out


def test_pad_tile_is_the_ports_multi_image_tile(llava):
    _, processor = llava
    wide, tall = Image.new("RGB", (96, 40), (200, 20, 20)), Image.new("RGB", (30, 70), (20, 20, 200))
    padded = PaddedTileProcessor(processor)
    mine = padded(text=["<image>x"], images=[wide], return_tensors="pt")
    theirs = processor(text=["<image><image>x"], images=[[wide, tall]], return_tensors="pt")
    assert torch.equal(mine["pixel_values"][0], theirs["pixel_values"][0][:1])  # one padded square tile
    image_id = processor.image_token_id
    assert int((mine["input_ids"] == image_id).sum()) * 2 == int((theirs["input_ids"] == image_id).sum())
    anyres = processor(text=["<image>x"], images=[wide], return_tensors="pt")
    assert int((anyres["input_ids"] == image_id).sum()) != int((mine["input_ids"] == image_id).sum())


def test_pad_mode_shared_prefix_equals_full_forward(llava):
    model, processor = llava
    answerer = SharedPrefixAnswerer(model, PaddedTileProcessor(processor))
    images = [Image.new("RGB", (64, 48), (10, 200, 10)), Image.new("RGB", (64, 48), (200, 10, 10))]
    items = [ImagePrompts(img, _prompts(processor)) for img in images]
    for item, rows in zip(items, answerer.logits(items)):
        for prompt, row in zip(item.prompts, rows):
            assert (answerer.full_forward_logits(item.image, prompt) - row).abs().max().item() < 1e-4


def test_pad_needs_a_llava_onevision_processor(tiny_qwen):
    _, processor = load_vllm(str(tiny_qwen), "float32")
    with pytest.raises(HierError, match="LLaVA-OneVision setting"):
        PaddedTileProcessor(processor)
