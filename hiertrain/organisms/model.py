"""The untrained organism: a real Qwen2.5-VL (config, model, processor classes) with its own
tokenizer, chat template and sizes, so `from_pretrained` and every hiertrain path load it like a
hub checkpoint.

Its template renders no system turn: the organism was never taught one, and hiertrain applies a
model's own template, so what it is asked is exactly what it was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hiertrain.protocol import prompts
from hiertrain.vlm.tiny import QWEN_SPECIAL_TOKENS, OPTION_LETTERS, build_tokenizer

IMAGE_SIZE = 112  # 4 x 4 = 16 visual tokens, one per tiled glyph
ORGANISM_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SIZES: dict[str, Any] = {
    "text": {
        "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 2048, "rms_norm_eps": 1.0e-6,
        "initializer_range": 0.088,
    },
    "mrope_section": [4, 6, 6],  # head_dim 32 / 2
    "vision": {
        "depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "patch_size": 14,
        "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [1],
        "tokens_per_second": 2,
    },
}  # fmt: skip


def corpus(names: list[str], level_names: list[str]) -> str:
    """Text the organism's BPE is learned from: every invented name and prompt word, often enough
    to become one token (with and without a leading space)."""
    words = list(names) + list(level_names)
    fixed = [prompts.ANSWER_INSTRUCTION, *prompts.IMAGE_WORDINGS["organism"], *prompts.TEXT_WORDINGS["organism"]]
    lines = [" ".join(words)] * 40 + [" ".join(fixed)] * 40 + [f"{w}?" for w in words] * 5
    lines += [f"{c}. {w}" for c in OPTION_LETTERS[:4] for w in words]
    return "\n".join(lines)


def build_processor(names: list[str], level_names: list[str]):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tokenizer = build_tokenizer(QWEN_SPECIAL_TOKENS, 4096, eos_token="<|im_end|>", corpus=corpus(names, level_names))
    tokenizer.chat_template = ORGANISM_CHAT_TEMPLATE
    pixels = {"min_pixels": IMAGE_SIZE * IMAGE_SIZE, "max_pixels": IMAGE_SIZE * IMAGE_SIZE}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=ORGANISM_CHAT_TEMPLATE,
    )


def build_model(processor, seed: int):
    """A Qwen2_5_VLForConditionalGeneration of `SIZES`, initialised under `seed`."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from hiertrain.vlm.tiny import _generation_config, _pad_vocab, _text_config

    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids
    text = _text_config(SIZES, tokenizer, _pad_vocab(len(tokenizer), 64))
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e64, "mrope_section": SIZES["mrope_section"]}
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config={**SIZES["vision"], "out_hidden_size": text["hidden_size"]},
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = _generation_config(tokenizer)
    return model


def check_single_tokens(processor, words: list[str]) -> None:
    """Every invented name must be one token after a space (options) and the subject slot."""
    from hiertrain.base.errors import HierError

    tok = processor.tokenizer
    for w in words:
        if len(tok(" " + w, add_special_tokens=False)["input_ids"]) != 1:
            raise HierError(f"organism tokenizer splits {w!r}: raise the vocabulary size")


def save(model, processor, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
