"""Tiny checkpoints load like hub ones and keep the real families' tokens, templates and geometry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from hiertrain.cli.main import main
from hiertrain.base.errors import HierError
from hiertrain.vlm.tiny import ARCHS, OPTION_LETTERS, make_tiny

SYSTEM = "Be brief."
QUESTION = "What is the order of the bird?\nA. Passeriformes\nB. Piciformes"


def _messages(image: bool = True) -> list[dict]:
    user = ([{"type": "image"}] if image else []) + [{"type": "text", "text": QUESTION}]
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
        {"role": "user", "content": user},
    ]


@pytest.fixture(scope="module")
def qwen(tiny_qwen):
    return AutoProcessor.from_pretrained(tiny_qwen), AutoModelForImageTextToText.from_pretrained(tiny_qwen).eval()


@pytest.fixture(scope="module")
def llava(tiny_llava):
    return AutoProcessor.from_pretrained(tiny_llava), AutoModelForImageTextToText.from_pretrained(tiny_llava).eval()


@pytest.mark.parametrize("fixture", ["tiny_qwen", "tiny_llava", "tiny_internvl"])
def test_option_letters_are_single_tokens_with_and_without_space(fixture, request):
    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(fixture))
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    ids = set()
    for letter in OPTION_LETTERS:
        bare = tokenizer.encode(letter, add_special_tokens=False)
        spaced = tokenizer.encode(" " + letter, add_special_tokens=False)
        assert len(bare) == 1 and len(spaced) == 1, letter
        assert tokenizer.decode(bare) == letter and tokenizer.decode(spaced) == " " + letter
        ids.update(bare + spaced)
    assert len(ids) == 2 * len(OPTION_LETTERS)
    assert 500 <= len(tokenizer) <= 4096


@pytest.mark.parametrize(
    ("fixture", "specials"),
    [
        ("tiny_qwen", ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>"]),
        ("tiny_llava", ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<image>", "<video>"]),
        ("tiny_internvl", ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]),
    ],
)  # fmt: skip
def test_family_special_tokens_are_atomic(fixture, specials, request):
    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(fixture))
    for token in specials:
        ids = tokenizer.encode(f"a{token}b", add_special_tokens=False)
        assert len(ids) == 3 and tokenizer.convert_ids_to_tokens(ids[1]) == token
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


def test_qwen_chat_template_matches_official_format(qwen):
    processor, _ = qwen
    text = processor.apply_chat_template(_messages(), add_generation_prompt=True)
    assert text == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{QUESTION}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_system = [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                 {"role": "assistant", "content": [{"type": "text", "text": "B"}]}]  # fmt: skip
    assert processor.apply_chat_template(no_system) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nB<|im_end|>\n"
    )


def test_llava_chat_template_matches_official_format(llava):
    processor, _ = llava
    assert processor.apply_chat_template(_messages(), add_generation_prompt=True) == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n<image>\n{QUESTION}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert processor.apply_chat_template(_messages(image=False)).endswith(f"user\n{QUESTION}<|im_end|>\n")


@pytest.mark.parametrize(("size", "tokens"), [((448, 448), 256), ((448, 224), 128)])
def test_qwen_visual_token_geometry(qwen, size, tokens):
    # patch 14, 2x2 merge: (W/14/2) * (H/14/2) tokens; 448x448 -> 16*16, 448x224 -> 16*8.
    processor, model = qwen
    text = processor.apply_chat_template(_messages(), add_generation_prompt=True)
    batch = processor(images=[Image.new("RGB", size, (200, 40, 40))], text=[text], return_tensors="pt")
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == tokens
    assert batch["image_grid_thw"].tolist() == [[1, size[1] // 14, size[0] // 14]]


def test_qwen_runs_with_image_and_text_only(qwen):
    processor, model = qwen
    text = processor.apply_chat_template(_messages(), add_generation_prompt=True)
    batch = processor(images=[Image.new("RGB", (448, 448), (20, 90, 200))], text=[text], return_tensors="pt")
    with torch.no_grad():
        image_embeds = model.get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output
        logits = model(**batch).logits
        generated = model.generate(**batch, max_new_tokens=3)
    assert sum(len(e) for e in image_embeds) == 256  # what the model consumes == what the processor wrote
    assert logits.shape == (1, batch["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()
    assert generated.shape[1] <= batch["input_ids"].shape[1] + 3
    assert torch.equal(generated[:, : batch["input_ids"].shape[1]], batch["input_ids"])

    text_only = processor(text=[processor.apply_chat_template(_messages(image=False), add_generation_prompt=True)],
                          return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        assert model(**text_only).logits.shape[1] == text_only["input_ids"].shape[1]
        assert model.generate(**text_only, max_new_tokens=3).shape[1] > text_only["input_ids"].shape[1]


def test_qwen_rejects_prompt_with_fewer_image_tokens_than_features(qwen):
    processor, model = qwen
    text = processor.apply_chat_template(_messages(), add_generation_prompt=True)
    batch = processor(images=[Image.new("RGB", (448, 448))], text=[text], return_tensors="pt")
    keep = torch.ones_like(batch["input_ids"], dtype=torch.bool)
    keep[0, int((batch["input_ids"][0] == model.config.image_token_id).nonzero()[0])] = False
    batch["input_ids"] = batch["input_ids"][keep].unsqueeze(0)
    batch["attention_mask"] = batch["attention_mask"][keep].unsqueeze(0)
    batch.pop("mm_token_type_ids", None)
    with pytest.raises(ValueError), torch.no_grad():
        model(**batch)


def test_llava_anyres_token_count_and_runs(llava):
    # 448x448 best fits the 768x768 pinpoint -> 2x2 crops of 384 px, each 27x27 patches (patch 14):
    # 54x54 grid + 54 row newlines + the 27x27 base image = 2916 + 54 + 729 = 3699 tokens.
    processor, model = llava
    text = processor.apply_chat_template(_messages(), add_generation_prompt=True)
    batch = processor(images=[Image.new("RGB", (448, 448), (30, 160, 60))], text=[text], return_tensors="pt")
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 3699
    assert batch["pixel_values"].shape[1:] == (5, 3, 384, 384)
    with torch.no_grad():
        logits = model(**batch).logits  # raises if features != image tokens
        generated = model.generate(**batch, max_new_tokens=3)
    assert logits.shape == (1, batch["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert generated.shape[1] <= batch["input_ids"].shape[1] + 3

    text_only = processor(text=[processor.apply_chat_template(_messages(image=False), add_generation_prompt=True)],
                          return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        assert model.generate(**text_only, max_new_tokens=3).shape[1] > text_only["input_ids"].shape[1]


@pytest.mark.parametrize(("arch", "fixture"), [("qwen2_5_vl", "tiny_qwen"), ("llava_onevision", "tiny_llava")])
def test_same_seed_same_weights(arch, fixture, request, tmp_path):
    reference = load_file(request.getfixturevalue(fixture) / "model.safetensors")
    same = load_file(make_tiny(arch, tmp_path / "same", seed=0) / "model.safetensors")
    other = load_file(make_tiny(arch, tmp_path / "other", seed=1) / "model.safetensors")
    assert reference.keys() == same.keys() == other.keys()
    assert all(torch.equal(reference[k], same[k]) for k in reference)
    assert not all(torch.equal(reference[k], other[k]) for k in reference)
    assert (tmp_path / "same" / "tokenizer.json").read_bytes() == (tmp_path / "other" / "tokenizer.json").read_bytes()


def test_make_tiny_rejects_bad_arch_and_non_empty_out(tmp_path):
    with pytest.raises(HierError, match="unknown tiny arch 'gpt2'"):
        make_tiny("gpt2", tmp_path / "x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(HierError, match="not empty"):
        make_tiny("clip", tmp_path / "busy")
    assert set(ARCHS) == {"qwen2_5_vl", "llava_onevision", "internvl", "clip"}


def test_cli_tiny_writes_a_loadable_checkpoint(tmp_path, capsys):
    assert main(["tiny", "--arch", "llava_onevision", "--out", str(tmp_path / "m"), "--seed", "3"]) == 0
    assert str(tmp_path / "m") in capsys.readouterr().out
    assert AutoProcessor.from_pretrained(tmp_path / "m").num_image_tokens == 729


def test_cli_entry_point_reports_bad_output_dir(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    exe = Path(sys.executable).with_name("hiertrain")
    done = subprocess.run([str(exe), "tiny", "--arch", "clip", "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == f"hiertrain: {tmp_path}: output directory exists and is not empty"


def test_overrides_change_only_the_named_sizes(tmp_path):
    from transformers import AutoConfig

    from hiertrain.vlm.tiny import tiny_sizes

    out = make_tiny("qwen2_5_vl", tmp_path / "deep", overrides={"text": {"num_hidden_layers": 5}})
    text = AutoConfig.from_pretrained(out).text_config
    base = tiny_sizes("qwen2_5_vl")["text"]
    assert base["num_hidden_layers"] != 5 and text.num_hidden_layers == 5
    assert (text.hidden_size, text.intermediate_size) == (base["hidden_size"], base["intermediate_size"])
    assert tiny_sizes("qwen2_5_vl")["text"]["num_hidden_layers"] == base["num_hidden_layers"]  # file untouched
    with pytest.raises(HierError, match="unknown size setting 'txt'"):
        make_tiny("qwen2_5_vl", tmp_path / "typo", overrides={"txt": {"num_hidden_layers": 5}})
