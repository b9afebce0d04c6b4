"""The paper's LoRA training format (conversation records) -> the same masked training batches."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from hiertrain.base.errors import HierError
from hiertrain.paper.paper_image_paths import AUTHORS_PREFIX
from hiertrain.datamodules.paper_conversations import (
    SYSTEM_MESSAGE,
    ConversationCollator,
    PaperTuningDataModule,
    read_conversations,
)
from hiertrain.datamodules.tuning import IGNORE_INDEX

QUESTION = "Given the plant in the image, what is its taxonomic classification at the family level?\nA. Rosaceae\nB. Poaceae\nC. Fabaceae\nD. Asteraceae\nAnswer with the option's letter from the given choices directly."
TEXT_Q = "Given the Houstonia purpurea, what is its taxonomic classification at the family level?\nA. Rubiaceae\nB. Poaceae\nAnswer with the option's letter from the given choices directly."


@pytest.fixture()
def files(tmp_path):
    """train_plant_img.json / train_plant_text.json look-alikes; images under the authors' prefix."""
    root = tmp_path / "inat21"
    (root / "train/00001_Plantae").mkdir(parents=True)
    Image.new("RGB", (56, 56), (10, 200, 30)).save(root / "train/00001_Plantae/a.jpg")
    img = [
        {"id": "0", "image": "a.jpg", "image_path": AUTHORS_PREFIX + "inat21/train/00001_Plantae/a.jpg",
         "conversations": [{"from": "human", "value": "<image>\n" + QUESTION}, {"from": "gpt", "value": "C"}]},
    ]  # fmt: skip
    text = [
        {"id": "0", "conversations": [{"from": "human", "value": TEXT_Q}, {"from": "gpt", "value": "A"}]},
        {"id": "1", "conversations": [
            {"from": "human", "value": TEXT_Q}, {"from": "gpt", "value": "A"},
            {"from": "human", "value": "And at the order level?\nA. Gentianales\nB. Poales"}, {"from": "gpt", "value": "A"}]},
    ]  # fmt: skip
    (tmp_path / "train_plant_img.json").write_text(json.dumps(img, indent=2))
    (tmp_path / "train_plant_text.json").write_text(json.dumps(text, indent=2))
    return tmp_path, root


def _paper_sequence(user: str, answer: str, image_tokens: int = 0) -> str:
    """The string the paper's data.py tokenizes (its constants and f-strings)."""
    user = user.replace("<image>\n", "<|vision_start|>" + "<|image_pad|>" * image_tokens + "<|vision_end|>")
    return (
        f"<|im_start|>system\n{SYSTEM_MESSAGE}<|im_end|>\n"
        f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"
    )


def test_image_record_matches_the_papers_sequence(files, processor, family):
    folder, root = files
    dm = PaperTuningDataModule("unused.jsonl", train_conversations=str(folder / "train_plant_img.json"), image_root=str(root))
    dm.connect(processor=processor, family=family)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and batch["skipped"] == 0
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    n_image = int((ids == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert n_image > 0 and int(batch["image_grid_thw"].prod(-1).sum()) // 4 == n_image  # 2x2 merge
    text = processor.tokenizer.decode(ids)
    assert text == _paper_sequence("<image>\n" + QUESTION, "C", n_image)
    assert processor.tokenizer.decode(labels[labels != IGNORE_INDEX]) == "C<|im_end|>\n"
    first = int((labels != IGNORE_INDEX).nonzero()[0])
    assert (labels[:first] == IGNORE_INDEX).all() and (labels[first:] != IGNORE_INDEX).all()


def test_text_records_single_and_multi_turn(files, processor, family):
    folder, _ = files
    collator = ConversationCollator(processor, family)
    dm = PaperTuningDataModule("unused.jsonl", train_conversations=str(folder / "train_plant_text.json"))
    dataset = dm.conversation_dataset()
    batch = collator([dataset[0], dataset[1]])
    assert "pixel_values" not in batch
    one = batch["input_ids"][0][batch["attention_mask"][0].bool()]
    assert processor.tokenizer.decode(one) == _paper_sequence(TEXT_Q, "A")
    labels = batch["labels"][1]
    supervised = [processor.tokenizer.decode(labels[i : j]) for i, j in _runs(labels != IGNORE_INDEX)]
    assert supervised == ["A<|im_end|>\n", "A<|im_end|>\n"]  # both answers, nothing else
    assert torch.equal(batch["labels"][0][batch["labels"][0] != IGNORE_INDEX], batch["input_ids"][0][batch["labels"][0] != IGNORE_INDEX])


def _runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    out, start = [], None
    for i, m in enumerate(mask.tolist() + [False]):
        if m and start is None:
            start = i
        if not m and start is not None:
            out.append((start, i))
            start = None
    return out


@pytest.mark.parametrize(
    "record, message",
    [
        ({"conversations": [{"from": "human", "value": "q"}]}, "pairs"),
        ({"conversations": [{"from": "gpt", "value": "q"}, {"from": "human", "value": "a"}]}, "expected 'human' then 'gpt'"),
        ({"image": "a.jpg", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "A"}]}, "0 <image> placeholders but an 'image' key"),
        ({"conversations": [{"from": "human", "value": "<image>q"}, {"from": "gpt", "value": "A"}]}, "1 <image> placeholders but no 'image' key"),
    ],
)
def test_bad_records_are_one_line_errors(tmp_path, record, message):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([record]))
    with pytest.raises(HierError, match=f"train.json: record 0: .*{message}"):
        read_conversations(str(path))
