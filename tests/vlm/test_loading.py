"""load_vllm loads tiny checkpoints like hub ones; the part accessors find the right modules."""

from __future__ import annotations

import json

import pytest
import torch

from hiertrain.base.errors import HierError
from hiertrain.vlm.family import family_of
from hiertrain.vlm.loading import load_vllm
from hiertrain.vlm.tiny import LLAVA_SPECIAL_TOKENS, build_tokenizer


def test_load_qwen_and_its_parts(tiny_qwen):
    model, processor = load_vllm(str(tiny_qwen))
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert family_of(model).language_model(model) is model.model.language_model
    assert family_of(model).vision_tower(model) is model.model.visual
    assert family_of(model).projector(model) is model.model.visual.merger
    assert type(family_of(model).language_model(model)).__name__ == "Qwen2_5_VLTextModel"


def test_load_llava_and_its_parts(tiny_llava):
    model, processor = load_vllm(str(tiny_llava), dtype="bfloat16")
    assert type(model).__name__ == "LlavaOnevisionForConditionalGeneration"
    assert type(processor).__name__ == "LlavaOnevisionProcessor"
    assert next(model.parameters()).dtype == torch.bfloat16
    assert family_of(model).language_model(model) is model.model.language_model
    assert family_of(model).vision_tower(model) is model.model.vision_tower
    assert family_of(model).projector(model) is model.model.multi_modal_projector
    assert type(family_of(model).vision_tower(model)).__name__ == "SiglipVisionModel"


def test_plain_causal_lm_returns_tokenizer_as_processor(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer(LLAVA_SPECIAL_TOKENS, 1024, eos_token="<|im_end|>")
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, processor = load_vllm(str(tmp_path))
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert type(processor).__name__ == "Qwen2Tokenizer"
    assert family_of(model).language_model(model) is model.model
    with pytest.raises(HierError, match="has no vision tower"):
        family_of(model).vision_tower(model)
    with pytest.raises(HierError, match="Qwen2ForCausalLM"):
        family_of(model).projector(model)


def test_bad_inputs_are_one_line_hier_errors(tmp_path):
    with pytest.raises(HierError, match="no such model directory"):
        load_vllm(str(tmp_path / "missing" / "model"))
    with pytest.raises(HierError, match=r"not a model directory \(no config.json\)"):
        load_vllm(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip_vision_model"}))
    with pytest.raises(HierError, match="'siglip_vision_model' is neither an image-text-to-text model nor a causal LM"):
        load_vllm(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(HierError) as err:
        load_vllm(str(tmp_path))
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)
    with pytest.raises(HierError, match="unknown dtype 'fp8'"):
        load_vllm(str(tmp_path), dtype="fp8")
