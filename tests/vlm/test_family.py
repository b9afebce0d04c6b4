"""The family registry: each model type gets its adapter, unknown image-text models are refused
in one line, text-only models fall back to the causal-LM family."""

from __future__ import annotations

import pytest
import torch

from hiertrain.base.errors import HierError
from hiertrain.vlm.family import (
    FAMILIES,
    CausalLMFamily,
    InternVLFamily,
    LlavaOnevisionFamily,
    QwenVLFamily,
    family_of,
)


def test_registry_keys_on_model_type() -> None:
    from transformers import InternVLConfig, LlavaOnevisionConfig, Qwen2_5_VLConfig, Qwen2Config, Qwen2VLConfig

    assert type(family_of(Qwen2VLConfig())) is QwenVLFamily
    assert type(family_of(Qwen2_5_VLConfig())) is QwenVLFamily
    assert type(family_of(LlavaOnevisionConfig())) is LlavaOnevisionFamily
    assert type(family_of(InternVLConfig())) is InternVLFamily
    plain = family_of(Qwen2Config())
    assert type(plain) is CausalLMFamily and plain.text_only and plain.model_type == "qwen2"
    assert set(FAMILIES) >= {"qwen2_vl", "qwen2_5_vl", "llava_onevision", "internvl"}


def test_unknown_image_text_model_is_a_one_line_error() -> None:
    from transformers import PaliGemmaConfig

    with pytest.raises(HierError) as err:
        family_of(PaliGemmaConfig())
    message = str(err.value)
    assert "'paligemma'" in message and "llava_onevision" in message and "qwen2_5_vl" in message
    assert "\n" not in message


def test_unknown_image_text_model_fails_before_loading_weights(tmp_path) -> None:
    from transformers import PaliGemmaConfig

    from hiertrain.vlm.loading import load_vllm

    PaliGemmaConfig().save_pretrained(tmp_path)  # a config only: loading weights would fail differently
    with pytest.raises(HierError, match=rf"{tmp_path}: model type 'paligemma' is an image-text model without a family"):
        load_vllm(str(tmp_path))


def test_qwen_positions_and_state(tiny_qwen) -> None:
    from PIL import Image

    from hiertrain.vlm.loading import load_vllm

    model, processor = load_vllm(str(tiny_qwen))
    family = family_of(model)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = dict(processor(text=[text], images=[Image.new("RGB", (112, 112))], return_tensors="pt"))
    positions, delta = family.prefix_positions(model, inputs)
    assert positions.shape == (3, *inputs["input_ids"].shape)  # mRoPE: temporal, height, width rows
    assert delta.shape == (1, 1) and int(delta) < 0  # the image's grid is shorter than its tokens
    assert family.text_positions(torch.arange(4)[None]).shape == (3, 1, 4)
    model.model.rope_deltas = torch.tensor([[7]])
    family.reset_state(model)
    assert model.model.rope_deltas is None
    assert family.tokenizer(processor) is processor.tokenizer
    assert family.per_token_keys == ("mm_token_type_ids",)


def test_llava_positions_are_plain_and_tiles_pad_in_batches(tiny_llava) -> None:
    from hiertrain.vlm.loading import load_vllm

    model, _ = load_vllm(str(tiny_llava))
    family = family_of(model)
    ids = torch.zeros(2, 5, dtype=torch.long)
    positions, delta = family.prefix_positions(model, {"input_ids": ids})
    assert positions.tolist() == [list(range(5))] * 2 and delta.tolist() == [[0], [0]]
    # crop counts differ with the aspect ratio: the crop axis is zero-padded, nothing is lost
    a, b = torch.randn(1, 3, 3, 4, 4), torch.randn(1, 5, 3, 4, 4)
    batch = family.batch_image_tensors(
        [{"pixel_values": a, "image_sizes": torch.tensor([[4, 4]])}, {"pixel_values": b, "image_sizes": torch.tensor([[4, 8]])}],
        ["pixel_values", "image_sizes"],
    )  # fmt: skip
    assert batch["pixel_values"].shape == (2, 5, 3, 4, 4)
    assert torch.equal(batch["pixel_values"][0, :3], a[0]) and batch["pixel_values"][0, 3:].abs().sum() == 0
    assert torch.equal(batch["pixel_values"][1], b[0]) and batch["image_sizes"].tolist() == [[4, 4], [4, 8]]


def test_families_without_image_sites_say_so() -> None:
    from transformers import Qwen2Config, Qwen2VLConfig

    with pytest.raises(HierError, match="'qwen2_vl': image-side feature extraction supports qwen2_5_vl, llava_onevision, internvl"):
        family_of(Qwen2VLConfig()).image_site_dims(None)
    with pytest.raises(HierError, match="text-only: use mode: text"):
        family_of(Qwen2Config()).image_site_dims(None)


def test_internvl_parts_and_shared_prefix_logits(tiny_internvl) -> None:
    """InternVL-hf through the shared layout: its parts, and letter logits from the shared-prefix
    cache equal a full forward (fp32), as for Qwen and LLaVA."""
    from PIL import Image

    from hiertrain.protocol import prompts
    from hiertrain.vlm.loading import load_vllm
    from hiertrain.vlm.lora_targets import check_targets
    from hiertrain.vlm.prefix_cache import ImagePrompts, SharedPrefixAnswerer, render_chat

    model, processor = load_vllm(str(tiny_internvl))
    family = family_of(model)
    assert type(family) is InternVLFamily
    assert family.language_model(model) is model.model.language_model
    assert family.vision_tower(model) is model.model.vision_tower
    assert family.projector(model) is model.model.multi_modal_projector
    names = check_targets(model, family.language_model(model), family.lora_pattern(model))  # LM only, 7 per layer
    assert len(names) == 7 * model.config.text_config.num_hidden_layers
    answerer = SharedPrefixAnswerer(model, processor)
    image = Image.new("RGB", (500, 300), (200, 30, 30))
    texts = [prompts.question_text(prompts.image_prompt(0, level, "object"), ["circle", "square", "star"]) for level in ("shape", "colour")]
    rendered = [render_chat(processor, prompts.chat_messages(t, "image")) for t in texts]
    shared = answerer.logits([ImagePrompts(image, rendered)])[0]
    for row, prompt in zip(shared, rendered):
        full = answerer.full_forward_logits(image, prompt)
        assert (row - full).abs().max() < 1e-4
