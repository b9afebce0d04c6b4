"""LoRA training batches: the evaluation's questions, answered by their letter.

Each training sequence is one (image, level) question rendered exactly as evaluation renders it
(`level_questions` + the model's chat template via `render_chat`), followed by the target: the
answer letter and the chat template's end of turn. Prompt tokens are labelled -100 so the loss
is on the answer only. Records, splits, images and option order come from `HierVQADataModule`
and its `QuestionDataset`; only the collation is new here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader

from hiertrain.datamodules.questions import HierVQADataModule, QuestionDataset
from hiertrain.taxonomy.bank_index import LazyRecords
from hiertrain.datamodules.sampling import LoaderPosition, ResumableLoader, ResumableRandomSampler
from hiertrain.base.errors import HierError
from hiertrain.protocol.prompts import LETTERS

IGNORE_INDEX = -100


class TuningCollator:
    """Question items (one record, all its asked levels) -> a right-padded training batch.

    The prompt is tokenized with the processor (which expands the image placeholder into the
    visual tokens) and the target with the tokenizer alone; the first call checks that the two
    concatenated equal the tokenization of the whole conversation, so no token straddles the cut.
    The model's family (`hiertrain.vlm.family.ModelFamily`) names the tokenizer, the per-token
    processor outputs to extend over the target, and how image tensors are batched.
    """

    def __init__(
        self, processor: Any, family: Any, min_pixels: int | None = None, max_pixels: int | None = None,
        max_image_side: int | None = None,
    ) -> None:
        self.processor, self.family = processor, family
        self.min_pixels, self.max_pixels, self.max_image_side = min_pixels, max_pixels, max_image_side
        bounded = min_pixels is not None or max_pixels is not None
        self.image_kwargs = family.pixel_bounds_kwargs(min_pixels, max_pixels) if bounded else {}
        self.tokenizer = family.tokenizer(processor)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id
        self.is_vllm = not family.text_only
        self._checked = False

    def prompt_text(self, messages: list[dict]) -> str:
        """Exactly the evaluator's prompt (same function)."""
        from hiertrain.vlm.prefix_cache import render_chat

        return render_chat(self.processor, messages)

    def target_text(self, messages: list[dict], letter: str) -> str:
        """The chat template's rendering of the assistant turn `letter` (letter + end of turn)."""
        prompt = self.prompt_text(messages)
        reply = [{"type": "text", "text": letter}] if self.is_vllm else letter
        if not self.is_vllm:
            messages = [
                {**m, "content": "".join(p["text"] for p in m["content"] if p.get("type") == "text")}
                if isinstance(m["content"], list)
                else m
                for m in messages
            ]
        full = self.processor.apply_chat_template(
            messages + [{"role": "assistant", "content": reply}], tokenize=False, add_generation_prompt=False
        )
        if not full.startswith(prompt) or len(full) == len(prompt):
            raise HierError(
                f"{self.tokenizer.name_or_path}: chat template's assistant turn does not extend the generation "
                "prompt; cannot build a training target"
            )
        return full[len(prompt) :]

    def fit_image(self, image: Any) -> Any:
        """The tuning image as the model sees it: the longest-side cap first (LANCZOS, as the
        paper's evaluation), then the paper's LoRA resize (finetuning/src/training/data.py:46-70:
        qwen_vl_utils' `smart_resize` to min/max_pixels, multiples of 28, PIL's bicubic)."""
        from hiertrain.taxonomy.images import shrink_longest_side

        image = shrink_longest_side(image, self.max_image_side)
        if image is None or not self.image_kwargs:
            return image
        from PIL import Image
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        size = self.image_kwargs["size"]
        height, width = smart_resize(image.height, image.width, factor=28, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
        return image if (width, height) == image.size else image.resize((width, height), Image.BICUBIC)

    def _encode_prompt(self, prompt: str, image: Any) -> dict[str, torch.Tensor]:
        if image is None:
            enc = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        else:  # the same bounds to the processor: the fitted image passes unresized
            enc = self.processor(text=[prompt], images=[self.fit_image(image)], return_tensors="pt", **self.image_kwargs)
        return dict(enc)

    def example(self, messages: list[dict], letter: str, image: Any) -> dict[str, torch.Tensor]:
        """One training sequence: 1-D input_ids / labels (+ image tensors)."""
        prompt = self.prompt_text(messages)
        target = self.target_text(messages, letter)
        enc = self._encode_prompt(prompt, image)
        prompt_ids = enc.pop("input_ids")[0]
        enc.pop("attention_mask", None)
        target_ids = torch.tensor(self.tokenizer(target, add_special_tokens=False)["input_ids"], dtype=torch.long)
        if not self._checked:
            whole = self._encode_prompt(prompt + target, image)["input_ids"][0]
            if not torch.equal(whole, torch.cat([prompt_ids, target_ids])):
                raise HierError(
                    f"{self.tokenizer.name_or_path}: prompt and answer {target!r} do not tokenize apart "
                    "as they do together; the loss mask would be misplaced"
                )
            self._checked = True
        out = {
            "input_ids": torch.cat([prompt_ids, target_ids]),
            "labels": torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), target_ids]),
        }
        for key in self.family.per_token_keys:  # e.g. Qwen's mm_token_type_ids: text (0) for the target
            if key in enc:
                out[key] = torch.cat([enc.pop(key)[0], torch.zeros_like(target_ids)])
        out.update(enc)  # per-image tensors: pixel_values, image_grid_thw / image_sizes, ...
        return out

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        examples, skipped = [], 0
        for item in items:
            if item.get("error"):
                skipped += 1
                continue
            for level in item["levels"]:
                letter = LETTERS[level.options.index(level.truth)]
                examples.append(self.example(level.messages, letter, item["image"]))
        batch = self.pad(examples)
        batch["skipped"] = skipped
        batch["sample_ids"] = [item["sample_id"] for item in items if not item.get("error")]
        return batch

    def pad(self, examples: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """Right-pad the 1-D sequences; concatenate the per-image tensors in order."""
        if not examples:
            return {"input_ids": torch.empty(0, 0, dtype=torch.long)}
        width = max(len(e["input_ids"]) for e in examples)
        n = len(examples)
        batch: dict[str, Any] = {
            "input_ids": torch.full((n, width), self.pad_id, dtype=torch.long),
            "attention_mask": torch.zeros(n, width, dtype=torch.long),
            "labels": torch.full((n, width), IGNORE_INDEX, dtype=torch.long),
        }
        per_token = [key for key in self.family.per_token_keys if key in examples[0]]
        for key in per_token:
            batch[key] = torch.zeros(n, width, dtype=torch.long)
        for row, e in enumerate(examples):
            k = len(e["input_ids"])
            batch["input_ids"][row, :k] = e["input_ids"]
            batch["attention_mask"][row, :k] = 1
            batch["labels"][row, :k] = e["labels"]
            for key in per_token:
                batch[key][row, :k] = e[key]
        images = [k for k in examples[0] if k not in batch and isinstance(examples[0][k], torch.Tensor)]
        batch.update(self.family.batch_image_tensors(examples, images))
        return batch


class HierTuningDataModule(HierVQADataModule):
    """The question file's `train_split` as training batches, its `val_split` as evaluation items.

    Validation items are exactly what `HierVQADataModule` serves for testing (padded sampler,
    `valid` flags), so the HCA monitored during fit is computed like the final evaluation's.
    Test is never used for choosing checkpoints; `hiertrain test` with this data config (e.g.
    `VLLMEvaluator` on the merged model) evaluates `test_split` only.

    Args (beyond HierVQADataModule's):
        processor: processor / tokenizer dir for the training collation; None = the tuned
            model's processor, handed over by `connect` (LoRATuner calls it at setup).
        train_split / val_split / test_split: values of the records' `split` field.
        train_batch_size: records per training step (each gives one sequence per asked level).
        min_pixels / max_pixels: Qwen-VL pixel bounds of training images (the paper's LoRA:
            256*28*28 / 1280*28*28, finetune_lora_vqa.sh:48-49); None = the processor's own.
        max_image_side: shrink training images whose longest side is larger first (the paper's
            evaluation cap, 1680; its LoRA data.py has none). Validation images are served as
            evaluation serves them (the tuner's evaluator settings).
    """

    def __init__(
        self,
        questions: str,
        mode: Literal["image", "text"] = "image",
        processor: str | None = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        train_batch_size: int = 4,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_image_side: int | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("inference", "independent") != "independent" or kwargs.get("circular", False):
            raise HierError("LoRA tuning trains on independent questions: leave data.inference and data.circular at their defaults")
        super().__init__(questions, mode=mode, **kwargs)
        for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels), ("max_image_side", max_image_side)):
            if value is not None and value < 1:
                raise HierError(f"data.{name} must be a positive number of pixels, got {value}")
        if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
            raise HierError(f"data.min_pixels {min_pixels} is larger than data.max_pixels {max_pixels}")
        self.min_pixels, self.max_pixels, self.max_image_side = min_pixels, max_pixels, max_image_side
        self.processor_path = processor
        self.processor: Any = None
        self.family: Any = None  # hiertrain.vlm.family.ModelFamily, from `connect`
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.train_batch_size = train_batch_size
        self.train_position = LoaderPosition()  # what a checkpoint keeps of the training loader

    def connect(self, processor: Any = None, family: Any = None) -> None:
        """What the data module needs from the model, in one declared call (as litgpt's
        `DataModule.connect`): its processor (unless `processor` was configured) and its
        `hiertrain.vlm.family.ModelFamily`."""
        if self.processor is None:
            self.processor = processor
        self.family = family if family is not None else self.family

    def _collator(self, kind: type[TuningCollator] = TuningCollator) -> TuningCollator:
        """A `kind` collator on the connected (or configured) processor and model family."""
        if self.processor is None:
            if self.processor_path is None:
                raise HierError("HierTuningDataModule: no processor (give data.processor or use LoRATuner)")
            from transformers import AutoProcessor

            self.processor = AutoProcessor.from_pretrained(self.processor_path)
        if self.family is None:
            if self.processor_path is None:
                raise HierError("HierTuningDataModule: no model family (call connect(processor=, family=) or use LoRATuner)")
            from transformers import AutoConfig

            from hiertrain.vlm.family import family_of

            self.family = family_of(AutoConfig.from_pretrained(self.processor_path))
        return kind(self.processor, self.family, self.min_pixels, self.max_pixels, self.max_image_side)

    def image_settings(self) -> dict[str, int | None]:
        """What training images are resized to (recorded in the LoRA run.json)."""
        return {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels, "max_image_side": self.max_image_side}

    def split_records(self, split: str) -> LazyRecords:
        """Records of one split, in file order; HierError when the split is empty."""
        self.setup()
        records = self.records.with_split(split)
        if not len(records):
            found = self.records.splits()
            raise HierError(f"{self.questions}: no records with split {split!r} (splits found: {', '.join(found)})")
        return records

    def split_dataset(self, split: str, exclude: frozenset[int] | set[int] = frozenset()) -> QuestionDataset:
        """The parent's dataset (same images, prompts, options) restricted to one split."""
        dataset = HierVQADataModule.dataset(self)
        dataset.records = self.split_records(split).excluding(exclude)
        return dataset

    def served_records(self) -> LazyRecords:
        """What `hiertrain test` evaluates with this data config: the test split only."""
        return self.split_records(self.test_split)

    def dataset(self) -> QuestionDataset:
        return self.split_dataset(self.test_split, self.exclude_ids)

    def train_dataloader(self) -> DataLoader:
        dataset = self.split_dataset(self.train_split)
        return ResumableLoader(  # a killed fit resumes on the same batches and draws (sampling.py)
            dataset,
            batch_size=self.train_batch_size,
            sampler=ResumableRandomSampler(dataset),
            position=self.train_position,
            num_workers=self.num_workers,
            collate_fn=self._collator(),
        )

    def state_dict(self) -> dict[str, Any]:
        """The training loader's epoch position and RNG states (`sampling.ResumableLoader`), so
        `--ckpt_path last` resumes on the batches and draws an uninterrupted fit would use."""
        return {"train_loader": self.train_position.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_position.load_state_dict(state_dict.get("train_loader", {}))

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.split_dataset(self.val_split))
