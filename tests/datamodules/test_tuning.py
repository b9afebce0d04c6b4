"""Training batches: evaluation's exact prompt tokens (masked), then letter + end of turn."""

from __future__ import annotations

import pytest
import torch

from hiertrain.datamodules.tuning import IGNORE_INDEX, HierTuningDataModule, TuningCollator
from hiertrain.base.errors import HierError
from hiertrain.protocol.prompts import LETTERS
from hiertrain.vlm.family import CausalLMFamily, family_of


def _data(synth_dir, processor, family, mode="image", **kwargs) -> HierTuningDataModule:
    dm = HierTuningDataModule(
        str(synth_dir / "questions_random.jsonl"), mode=mode, taxonomy=str(synth_dir / "taxonomy.json"),
        subject="shape", **kwargs,
    )  # fmt: skip
    dm.connect(processor=processor, family=family)
    dm.setup("fit")
    return dm


def _evaluator_inputs(protocol, processor, item):
    """What `hiertrain test` (VLLMEvaluator's HFAnswerer) feeds the model for each level of `item` (its own code path)."""
    from hiertrain.answerers.hf import HFAnswerer

    prompts = HFAnswerer(None, processor, protocol).prompts(item)
    images = None if item["image"] is None else [item["image"]]
    return [processor(text=[p], images=images, return_tensors="pt") for p in prompts]


@pytest.mark.parametrize("mode", ["image", "text"])
def test_training_prompt_is_byte_identical_to_the_evaluators(synth_dir, tiny_qwen, processor, mode, family) -> None:
    dm = _data(synth_dir, processor, family, mode)
    item = dm.split_dataset("train")[0]
    collator = TuningCollator(processor, family)
    fed = _evaluator_inputs(dm.protocol, processor, item)
    assert len(fed) == len(item["levels"]) == (4 if mode == "image" else 3)
    for level, evaluator_inputs in zip(item["levels"], fed):
        letter = LETTERS[level.options.index(level.truth)]
        ex = collator.example(level.messages, letter, item["image"])
        prompt_ids = evaluator_inputs["input_ids"][0]
        n = len(prompt_ids)
        assert torch.equal(ex["input_ids"][:n], prompt_ids)
        assert (ex["labels"][:n] == IGNORE_INDEX).all()
        target = ex["labels"][n:]
        assert (target != IGNORE_INDEX).all()
        # the answer letter, then the chat template's end of turn
        assert processor.tokenizer.decode(target) == f"{letter}<|im_end|>\n"
        assert torch.equal(ex["input_ids"][n:], target)
        if mode == "image":
            assert torch.equal(ex["pixel_values"], evaluator_inputs["pixel_values"])
            assert torch.equal(ex["image_grid_thw"], evaluator_inputs["image_grid_thw"])


def test_batches_cover_the_train_split_once_per_level(synth_dir, processor, family) -> None:
    dm = _data(synth_dir, processor, family, "image", train_batch_size=3, limit=15)  # 5 train records
    train = dm.split_records("train")
    assert {r.split for r in train} == {"train"}
    seen, sequences = [], 0
    for batch in dm.train_dataloader():
        seen += batch["sample_ids"]
        n = batch["input_ids"].shape[0]
        sequences += n
        # one image per sequence; right padding carries no loss and no attention
        assert batch["image_grid_thw"].shape[0] == n
        assert ((batch["labels"] != IGNORE_INDEX).sum(1) == 3).all()
        pad = batch["attention_mask"] == 0
        assert (batch["labels"][pad] == IGNORE_INDEX).all()
        assert batch["mm_token_type_ids"].shape == batch["input_ids"].shape
    assert sorted(seen) == sorted(r.sample_id for r in train)
    assert sequences == 4 * len(train)


def test_validation_and_test_serve_their_own_splits(synth_dir, processor, family) -> None:
    dm = _data(synth_dir, processor, family, "text", batch_size=5)
    val_ids = [item["sample_id"] for batch in dm.val_dataloader() for item in batch if item["valid"]]
    assert sorted(val_ids) == [r.sample_id for r in dm.records if r.split == "val"]
    # what `hiertrain test` (VLLMEvaluator + this data config) evaluates and finalizes
    assert [r.sample_id for r in dm.served_records()] == [r.sample_id for r in dm.records if r.split == "test"]
    assert {dm.dataset()[i]["record"].split for i in range(len(dm.dataset()))} == {"test"}
    with pytest.raises(HierError, match="no records with split 'holdout'"):
        dm.split_records("holdout")


def test_unreadable_training_image_is_skipped_and_counted(synth_dir, processor, tmp_path, family) -> None:
    import shutil

    copy = tmp_path / "synth"
    shutil.copytree(synth_dir, copy)
    dm = _data(copy, processor, family, "image", train_batch_size=64, limit=9)
    broken = dm.split_records("train")[0]
    (copy / broken.image).write_bytes(b"not a png")
    batch = next(iter(dm.train_dataloader()))
    assert batch["skipped"] == 1
    assert broken.sample_id not in batch["sample_ids"]
    assert batch["input_ids"].shape[0] == 4 * (len(dm.split_records("train")) - 1)


def test_plain_llm_tokenizer_collates(tiny_qwen, synth_dir, processor, family) -> None:
    # A causal LM's "processor" is its tokenizer (text mode): same masking, string contents.
    tokenizer = processor.tokenizer
    dm = _data(synth_dir, processor, family, "text")
    item = dm.split_dataset("train")[0]
    ex = TuningCollator(tokenizer, CausalLMFamily("qwen2")).example(item["levels"][0].messages, "B", None)
    target = ex["labels"][ex["labels"] != IGNORE_INDEX]
    assert tokenizer.decode(target) == "B<|im_end|>\n"
    assert "pixel_values" not in ex


def test_missing_processor_is_a_clear_error(synth_dir) -> None:
    dm = HierTuningDataModule(str(synth_dir / "questions_random.jsonl"))
    with pytest.raises(HierError, match="no processor"):
        dm.train_dataloader()


def test_llava_examples_with_different_tilings_collate_into_one_trainable_batch(tiny_llava, synth_dir) -> None:
    """LLaVA-OneVision's per-image crop count depends on the aspect ratio: the family pads the crop
    axis, and the padded batch gives the same logits as each example alone."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from hiertrain.protocol.prompts import chat_messages, image_prompt, question_text

    processor = AutoProcessor.from_pretrained(str(tiny_llava))
    model = AutoModelForImageTextToText.from_pretrained(str(tiny_llava)).eval()
    collator = TuningCollator(processor, family_of(model))
    messages = chat_messages(question_text(image_prompt(0, "shape", "shape"), ["circle", "square"]), "image")
    square = Image.open(synth_dir / "images" / "red_solid_circle_0.png").convert("RGB")
    examples = [collator.example(messages, "A", square), collator.example(messages, "B", square.resize((700, 300)))]
    assert examples[0]["pixel_values"].shape[1] != examples[1]["pixel_values"].shape[1]
    batch = collator.pad(examples)
    assert batch["pixel_values"].shape[:2] == (2, max(e["pixel_values"].shape[1] for e in examples))
    model_inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values", "image_sizes", "batch_num_images")}
    with torch.no_grad():
        logits = model(**model_inputs).logits
        for row, example in enumerate(examples):
            alone = collator.pad([example])
            single = model(**{k: v for k, v in alone.items() if k in model_inputs}).logits[0]
            n = len(example["input_ids"])
            torch.testing.assert_close(logits[row, :n], single[:n], rtol=1e-4, atol=1e-4)


def _visual_tokens(processor, batch) -> int:
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    return int((batch["input_ids"] == pad).sum())


def test_paper_lora_preset_gives_a_1800x1200_training_image_1247_visual_tokens(synth_dir, processor, family) -> None:
    """finetune_lora_vqa.sh:48-49 (256*28*28 .. 1280*28*28 through qwen_vl_utils, data.py:46-70): 1247 tokens;
    without the bounds the hub processor's 12845056 gives 2752 (here the tiny processor's own bound)."""
    from pathlib import Path

    import yaml
    from PIL import Image

    preset = Path(__file__).resolve().parents[2] / "configs" / "paper" / "lora" / "qwen2_5_vl_7b_paper_plant_img.yaml"
    args = yaml.safe_load(preset.read_text())["data"]["init_args"]
    dm = _data(synth_dir, processor, family, min_pixels=args["min_pixels"], max_pixels=args["max_pixels"])
    image = Image.new("RGB", (1800, 1200), (30, 120, 60))
    item = {**dm.split_dataset("train")[0], "image": image}
    paper = dm._collator()([item])
    per_level = _visual_tokens(processor, paper) // len(item["levels"])
    assert per_level == 1247 and paper["image_grid_thw"][0].tolist() == [1, 58, 86]
    hub = _data(synth_dir, processor, family, max_pixels=12845056)  # the hub processor's bound (no min/max in the script)
    assert _visual_tokens(processor, hub._collator()([item])) // len(item["levels"]) == 2752
    default = _data(synth_dir, processor, family)._collator()([item])
    assert _visual_tokens(processor, default) // len(item["levels"]) != 1247  # the processor's own bound otherwise
    assert dm.image_settings() == {"min_pixels": 200704, "max_pixels": 1003520, "max_image_side": None}


def test_pixel_bounds_are_refused_for_tiling_families(tiny_llava, synth_dir) -> None:
    from transformers import AutoConfig, AutoProcessor

    llava = family_of(AutoConfig.from_pretrained(str(tiny_llava)))
    dm = _data(synth_dir, AutoProcessor.from_pretrained(str(tiny_llava)), llava, max_pixels=1003520)
    with pytest.raises(HierError, match="min_pixels / max_pixels are Qwen-VL image settings"):
        dm._collator()
    with pytest.raises(HierError, match="min_pixels 9 is larger"):
        HierTuningDataModule("q.jsonl", min_pixels=9, max_pixels=4)
