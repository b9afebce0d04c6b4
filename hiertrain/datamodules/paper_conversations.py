"""The paper's own LoRA training sets (train_plant_img.json / train_plant_text.json) as batches.

Their format is the one the paper's finetuning/src/training/data.py reads: a JSON list of
records, each with `conversations` = [{"from": "human"|"gpt", "value": ...}, ...] in (user,
assistant) pairs; an image record has `image` (and/or `image_path`, which data.py prefers), and
its `<image>` placeholder (with an optional newline either side) marks where the image goes.
Every sequence starts with the paper's system message `SYSTEM_MESSAGE`; the user turns are
masked (-100) and each assistant answer plus the chat template's end of turn is the target,
as in data.py. Rendering goes through the model's own chat template (`render_chat`), the same
path hiertrain's generated questions take, so both kinds of example can be mixed or compared.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset

from hiertrain.base.errors import HierError
from hiertrain.base.resources import read_data_text
from hiertrain.datamodules.questions import open_image
from hiertrain.datamodules.sampling import ResumableLoader, ResumableRandomSampler
from hiertrain.datamodules.tuning import IGNORE_INDEX, HierTuningDataModule, TuningCollator

SYSTEM_MESSAGE = "You are a helpful assistant."  # the paper's finetuning/src/training/constants.py
IMAGE_TOKEN = "<image>"
_IMAGE_TOKEN = re.compile(r"\n?" + re.escape(IMAGE_TOKEN) + r"\n?")
ROLES = {"human": "user", "gpt": "assistant"}


@dataclass
class Conversation:
    """One training record: its index in the file, image path (None = text only) and turns."""

    index: int
    image: str | None
    turns: list[tuple[str, str]]  # (user text with <image> placeholders, assistant answer)


def read_conversations(path: str) -> list[Conversation]:
    """Read a paper training file; HierError "FILE: record N: ..." on anything data.py would not read."""
    text = read_data_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise HierError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
    if not isinstance(data, list) or not data:
        raise HierError(f"{path}: expected a non-empty JSON list of conversation records")
    out = []
    for n, record in enumerate(data):
        where = f"{path}: record {n}"
        turns = record.get("conversations") if isinstance(record, dict) else None
        if not isinstance(turns, list) or not turns or len(turns) % 2:
            raise HierError(f"{where}: 'conversations' must be a non-empty list of (human, gpt) pairs")
        pairs = []
        for k in range(0, len(turns), 2):
            user, answer = turns[k], turns[k + 1]
            if not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in (user, answer)):
                raise HierError(f"{where}: turn {k}: each turn needs 'from' and a string 'value'")
            if ROLES.get(user.get("from")) != "user" or ROLES.get(answer.get("from")) != "assistant":
                raise HierError(f"{where}: turn {k}: expected 'human' then 'gpt', got {user.get('from')!r}, {answer.get('from')!r}")
            if IMAGE_TOKEN in answer["value"]:
                raise HierError(f"{where}: turn {k + 1}: an answer holds {IMAGE_TOKEN}")
            pairs.append((user["value"], answer["value"]))
        image = record.get("image_path", record.get("image")) if "image" in record else None
        if isinstance(image, list):
            if len(image) != 1:
                raise HierError(f"{where}: {len(image)} images; one image per record is supported")
            image = image[0]
        marks = sum(u.count(IMAGE_TOKEN) for u, _ in pairs)
        if (image is None) != (marks == 0) or marks > 1:
            raise HierError(f"{where}: {marks} {IMAGE_TOKEN} placeholders but {'an' if image else 'no'} 'image' key")
        out.append(Conversation(index=n, image=image, turns=pairs))
    return out


def user_content(text: str) -> list[dict]:
    """A user turn as typed parts: the image where `<image>` stood (its newlines dropped, as in data.py)."""
    parts: list[dict] = []
    pieces = _IMAGE_TOKEN.split(text)
    for i, piece in enumerate(pieces):
        if i:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def conversation_messages(record: Conversation) -> list[dict]:
    """System message + alternating user / assistant messages (typed parts)."""
    messages = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_MESSAGE}]}]
    for user, answer in record.turns:
        messages.append({"role": "user", "content": user_content(user)})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


class ConversationDataset(Dataset):
    """Records -> {"sample_id", "messages", "image" (PIL | None), "error"} (unreadable image: error set)."""

    def __init__(
        self,
        records: Sequence[Conversation],
        image_dir: Path,
        image_root_map: dict[str, str] | None = None,
        on_bad_image: Literal["skip", "error"] = "skip",
    ) -> None:
        self.records, self.image_dir = list(records), Path(image_dir)
        self.image_root_map, self.on_bad_image = dict(image_root_map or {}), on_bad_image

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, image: str) -> Path:
        for old, new in self.image_root_map.items():
            if image.startswith(old):
                image = new + image[len(old) :]
                break
        path = Path(image)
        return path if path.is_absolute() else self.image_dir / path

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        item = {"sample_id": record.index, "messages": conversation_messages(record), "image": None, "error": None}
        if record.image is not None:
            path = self.image_path(record.image)
            try:
                item["image"] = open_image(path)
            except (OSError, ValueError) as err:
                message = f"{path}: cannot read image of training record {record.index} ({type(err).__name__}: {err})"
                if self.on_bad_image == "error":
                    raise HierError(message) from None
                item["error"] = message
        return item


class ConversationCollator(TuningCollator):
    """Conversation items -> the same right-padded batches as `TuningCollator` (one sequence a record)."""

    def _full_text(self, messages: list[dict]) -> str:
        if not self.is_vllm:
            messages = [{**m, "content": "".join(p["text"] for p in m["content"] if p.get("type") == "text")} for m in messages]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def segments(self, messages: list[dict]) -> list[tuple[str, bool]]:
        """(text, supervised) pieces of the rendered conversation: each user turn with the
        assistant header masked, each answer with its end of turn supervised."""
        out, done = [], ""
        for k in range(2, len(messages), 2):
            prompt = self.prompt_text(messages[:k])
            full = self._full_text(messages[: k + 1])
            if not prompt.startswith(done) or not full.startswith(prompt) or len(full) == len(prompt):
                raise HierError(
                    f"{self.tokenizer.name_or_path}: chat template does not render the conversation turn by turn; "
                    "cannot mask the prompt"
                )
            out += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
            done = full
        return out

    def conversation_example(self, messages: list[dict], image: Any) -> dict[str, torch.Tensor]:
        """One training sequence: 1-D input_ids / labels (+ the image tensors of the first turn)."""
        pieces = self.segments(messages)
        ids, labels, extra, per_token = [], [], {}, {}
        for i, (text, supervised) in enumerate(pieces):
            if i == 0:
                enc = self._encode_prompt(text, image)
                piece = enc.pop("input_ids")[0]
                enc.pop("attention_mask", None)
                per_token = {k: enc.pop(k)[0] for k in self.family.per_token_keys if k in enc}
                extra = {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}
            else:
                piece = torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
            ids.append(piece)
            labels.append(piece if supervised else torch.full_like(piece, IGNORE_INDEX))
        input_ids = torch.cat(ids)
        if not self._checked:
            whole = self._encode_prompt("".join(t for t, _ in pieces), image)["input_ids"][0]
            if not torch.equal(whole, input_ids):
                raise HierError(
                    f"{self.tokenizer.name_or_path}: the conversation's turns do not tokenize apart as they do "
                    "together; the loss mask would be misplaced"
                )
            self._checked = True
        out = {"input_ids": input_ids, "labels": torch.cat(labels)}
        for key, values in per_token.items():  # e.g. Qwen's mm_token_type_ids: text (0) after the first turn
            out[key] = torch.cat([values, torch.zeros(len(input_ids) - len(values), dtype=values.dtype)])
        out.update(extra)
        return out

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        examples = [self.conversation_example(it["messages"], it["image"]) for it in items if not it.get("error")]
        batch = self.pad(examples)
        batch["skipped"] = sum(1 for it in items if it.get("error"))
        batch["sample_ids"] = [it["sample_id"] for it in items if not it.get("error")]
        return batch


class PaperTuningDataModule(HierTuningDataModule):
    """`HierTuningDataModule` whose training batches come from a paper training file.

    Validation and test are the question file's `val_split` / `test_split` as before (so the
    monitored HCA and the before/after comparison are hiertrain's); training uses every record of
    `train_conversations` with its own prompt and answer. Image paths are the authors'
    absolute ones: `image_root` (your dataset download) maps them as for the question files.

    Args (beyond HierTuningDataModule's):
        train_conversations: the paper's train_plant_img.json / train_plant_text.json
            (`hiertrain data fetch paper --what training`).
        conversation_image_dir: base folder of relative image paths (data.py's --image_folder;
            default: the training file's folder).
    """

    def __init__(
        self,
        questions: str,
        train_conversations: str,
        conversation_image_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(questions, **kwargs)
        self.train_conversations = train_conversations
        self.conversation_image_dir = conversation_image_dir
        self.conversations: list[Conversation] | None = None

    def conversation_dataset(self) -> ConversationDataset:
        """Every training record, images mapped like the question file's."""
        if self.conversations is None:
            self.conversations = read_conversations(self.train_conversations)
        root_map = dict(self.image_root_map)
        images = [c.image for c in self.conversations if c.image is not None]
        if images and self.image_root:
            from hiertrain.paper.paper_image_paths import image_root_map

            root_map = {**image_root_map(images, self.image_root, source=str(self.train_conversations)), **root_map}
        image_dir = self.conversation_image_dir or str(Path(self.train_conversations).parent)
        return ConversationDataset(self.conversations, Path(image_dir), root_map, self.on_bad_image)

    def train_dataloader(self) -> DataLoader:
        dataset = self.conversation_dataset()
        return ResumableLoader(  # `--ckpt_path last` resumes on the same batches and draws (sampling.py)
            dataset,
            batch_size=self.train_batch_size,
            sampler=ResumableRandomSampler(dataset),
            position=self.train_position,
            num_workers=self.num_workers,
            collate_fn=self._collator(ConversationCollator),
        )
