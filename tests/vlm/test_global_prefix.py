"""The run-wide prefix (taxonomy in context): prefilled once, exact against a full forward."""

from __future__ import annotations

import pytest
import torch

from hiertrain.datamodules.questions import HierVQADataModule
from hiertrain.vlm.global_prefix import GlobalPrefixAnswerer
from hiertrain.vlm.loading import load_vllm
from hiertrain.vlm.prefix_cache import ImagePrompts, render_chat


@pytest.fixture(scope="module")
def qwen(tiny_qwen):
    return load_vllm(str(tiny_qwen), "float32")


def _batch(processor, synth_dir, mode="image", n=3):
    dm = HierVQADataModule(
        str(synth_dir / "questions_random.jsonl"), taxonomy=str(synth_dir / "taxonomy.json"), limit=n,
        condition="taxonomy", mode=mode,
    )  # fmt: skip
    items = [dm.dataset()[i] for i in range(n)]
    if mode == "image" and n > 1:  # another image size in the same step: prefixes of other lengths
        items[1]["image"] = items[1]["image"].resize((300, 200))
    return [ImagePrompts(it["image"], [render_chat(processor, lq.messages) for lq in it["levels"]]) for it in items]


@pytest.mark.parametrize("mode", ["image", "text"])
def test_letter_logits_equal_a_full_forward(qwen, synth_dir, mode):
    model, processor = qwen
    batch = _batch(processor, synth_dir, mode)
    answerer = GlobalPrefixAnswerer(model, processor, 6)
    logits = answerer.logits(batch) + answerer.logits(batch[:1])  # a second call reuses the cache
    assert answerer.global_prefills == 1 and answerer.global_steps == 2
    assert answerer.global_tokens > 200  # the synthetic taxonomy's system turn
    head = processor.tokenizer.decode(answerer._global_ids)
    assert head.startswith("<|im_start|>system\nYou are a helpful assistant. Here is a taxonomy: {")
    worst = 0.0
    for item, rows in zip(batch + batch[:1], logits):
        for prompt, row in zip(item.prompts, rows):
            worst = max(worst, float((answerer.full_forward_logits(item.image, prompt) - row).abs().max()))
    assert worst < 1e-4


def test_generate_equals_hf_generate(qwen, synth_dir):
    model, processor = qwen
    batch = _batch(processor, synth_dir, n=2)
    answerer = GlobalPrefixAnswerer(model, processor, 6)
    replies = answerer.generate(batch)
    assert answerer.global_steps == 1
    assert replies == [[answerer.full_generate(item.image, p) for p in item.prompts] for item in batch]


def test_prompts_without_the_run_wide_prefix_run_the_ordinary_way(qwen, synth_dir):
    model, processor = qwen
    batch = _batch(processor, synth_dir, n=1)
    answerer = GlobalPrefixAnswerer(model, processor, 6)
    answerer.logits(batch)
    other = [ImagePrompts(batch[0].image, [p.replace("Here is a taxonomy", "A taxonomy") for p in batch[0].prompts])]
    rows = answerer.logits(other)[0]
    assert answerer.global_steps == 1  # the second call fell back
    full = answerer.full_forward_logits(other[0].image, other[0].prompts[0])
    assert torch.allclose(rows[0], full, atol=1e-4)


@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_internvl"])
@pytest.mark.slow
def test_other_families_are_exact(request, synth_dir, fixture):
    model, processor = load_vllm(str(request.getfixturevalue(fixture)), "float32")
    batch = _batch(processor, synth_dir)
    answerer = GlobalPrefixAnswerer(model, processor, 4)
    logits = answerer.logits(batch)
    assert answerer.global_prefills == 1 and answerer.global_steps >= 1 and answerer.global_tokens > 200
    worst = max(
        float((answerer.full_forward_logits(item.image, p) - row).abs().max())
        for item, rows in zip(batch, logits)
        for p, row in zip(item.prompts, rows)
    )
    assert worst < 1e-4
