"""LoRA adapts the language model's projections only, never the vision tower or projector.

Qwen2.5-VL's vision MLPs are also called gate_proj/up_proj/down_proj: the plain name list
(what most LoRA recipes pass) silently adapts them; the anchored pattern does not.
"""

from __future__ import annotations

import re

import pytest
from torch import nn

from hiertrain.base.errors import HierError
from hiertrain.vlm.lora_targets import (
    ATTENTION,
    MLP,
    check_adapted,
    check_targets,
    matched_modules,
    target_pattern,
)
from hiertrain.vlm.family import family_of
from hiertrain.vlm.loading import load_vllm


@pytest.fixture(scope="module")
def qwen(tiny_qwen):
    model, _ = load_vllm(str(tiny_qwen))
    return model


def _peft(model, targets):
    import copy

    from peft import LoraConfig, get_peft_model

    return get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=4, target_modules=targets))


def test_pattern_is_anchored_on_the_language_model(qwen) -> None:
    pattern = family_of(qwen).lora_pattern(qwen)
    assert pattern.startswith(re.escape("model.language_model") + r"\.")
    names = check_targets(qwen, family_of(qwen).language_model(qwen), pattern)
    layers = qwen.config.text_config.num_hidden_layers
    assert len(names) == 7 * layers
    assert all(n.startswith("model.language_model.layers.") for n in names)
    # the same leaf names exist in the vision tower: the trap this pattern avoids
    vision_mlps = [n for n, m in qwen.named_modules() if isinstance(m, nn.Linear) and n.startswith("model.visual.")
                   and n.rsplit(".", 1)[-1] in MLP]  # fmt: skip
    assert vision_mlps and not set(vision_mlps) & set(names)


def test_no_vision_or_projector_parameter_is_trainable_or_adapted(qwen) -> None:
    peft_model = _peft(qwen, family_of(qwen).lora_pattern(qwen))
    base = peft_model.get_base_model()
    frozen = {"vision tower": family_of(base).vision_tower(base), "projector": family_of(base).projector(base)}
    check_adapted(peft_model, frozen, family_of(base).language_model(base))
    for part in frozen.values():
        assert not any(p.requires_grad for p in part.parameters())
        assert not any("lora_" in n for n, _ in part.named_parameters())
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".language_model." in n for n in trainable)
    assert len(trainable) == 2 * 7 * qwen.config.text_config.num_hidden_layers  # A and B per projection


def test_plain_name_list_adapts_the_vision_tower_and_is_caught(qwen) -> None:
    peft_model = _peft(qwen, list(ATTENTION + MLP))
    base = peft_model.get_base_model()
    frozen = {"vision tower": family_of(base).vision_tower(base), "projector": family_of(base).projector(base)}
    with pytest.raises(HierError, match="LoRA adapted the vision tower: blocks.0.mlp.gate_proj"):
        check_adapted(peft_model, frozen, family_of(base).language_model(base))


def test_bad_patterns_are_rejected_before_wrapping(qwen) -> None:
    lm = family_of(qwen).language_model(qwen)
    with pytest.raises(HierError, match="outside the language model: model.visual.blocks.0.mlp.gate_proj"):
        check_targets(qwen, lm, r".*\.mlp\.(gate|up|down)_proj")
    with pytest.raises(HierError, match="matches no linear layer"):
        check_targets(qwen, lm, r"nothing\.here")
    with pytest.raises(HierError, match=r"expected \['down_proj'"):
        check_targets(qwen, lm, r"model\.language_model\.layers\.\d+\.self_attn\.q_proj")


def test_pattern_for_a_plain_causal_lm_prefix() -> None:
    # A text-only LLM's layers sit at model.layers.N; the pattern follows the prefix it is given.
    pattern = target_pattern("model")
    assert re.fullmatch(pattern, "model.layers.11.mlp.down_proj")
    assert re.fullmatch(pattern, "model.layers.0.self_attn.o_proj")
    assert not re.fullmatch(pattern, "model.visual.blocks.0.mlp.down_proj")
    assert not re.fullmatch(pattern, "lm_head")
    assert not re.fullmatch(pattern, "model.layers.0.self_attn.rotary_emb")


def test_llava_onevision_targets(tiny_llava) -> None:
    model, _ = load_vllm(str(tiny_llava))
    lm = family_of(model).language_model(model)
    names = check_targets(model, lm, family_of(model).lora_pattern(model))
    assert names and all(".language_model.layers." in n for n in names)
    assert not set(names) & set(matched_modules(family_of(model).vision_tower(model), r".*"))
