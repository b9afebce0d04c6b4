"""`CLIPAnswerer`: zero-shot choice among a level's options by image-text cosine similarity (open_clip).

The model never sees the question: each option is the template with its label (`{label}`), the
pick is the option whose text embedding is closest to the image's. Text embeddings are cached
per label (a run asks the same labels again and again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from hiertrain.answerers.base import Answerer, Item
from hiertrain.protocol.prompts import CLIP_TEXT_TEMPLATE, LETTERS
from hiertrain.protocol.protocol import QuestionProtocol


@dataclass(frozen=True)
class CLIPSettings:
    template: str = CLIP_TEXT_TEMPLATE  # an option's text; `{label}` is replaced by the option


class CLIPAnswerer(Answerer):
    """An open_clip model, its image preprocessing and tokenizer, answering image questions."""

    backend = "transformers"  # runs in this process (run.json's `backend`; open_clip in `settings`)
    asks_text = False

    def __init__(self, model: Any, preprocess: Any, tokenizer: Any, protocol: QuestionProtocol, settings: CLIPSettings = CLIPSettings()) -> None:
        super().__init__(protocol, "clip")
        self.model, self.preprocess, self.tokenizer, self.settings = model, preprocess, tokenizer, settings
        self._text_cache: dict[str, torch.Tensor] = {}

    def configure(self, settings: CLIPSettings) -> None:
        """Answer with other settings from now on (the cached text embeddings are dropped)."""
        self.settings = settings
        self._text_cache.clear()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompts(self, item: Item) -> list[list[str]]:
        """Each asked level's option texts, as the text encoder sees them."""
        return [[self.settings.template.format(label=label) for label in lq.options] for lq in item["levels"]]

    @torch.no_grad()
    def text_features(self, labels: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings of the options, [n, d], cached per label."""
        new = [label for label in dict.fromkeys(labels) if label not in self._text_cache]
        if new:
            tokens = self.tokenizer([self.settings.template.format(label=label) for label in new]).to(self.device)
            features = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
            self._text_cache.update(zip(new, features))
        return torch.stack([self._text_cache[label] for label in labels])

    @torch.no_grad()
    def logits(self, items: list[Item]) -> list[list[torch.Tensor]]:
        """Per item, each asked level's option similarities."""
        pixels = torch.stack([self.preprocess(item["image"]) for item in items]).to(self.device)
        images = torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)
        return [[self.text_features(lq.options) @ image for lq in item["levels"]] for item, image in zip(items, images)]

    def pick(self, output: torch.Tensor, options: list[str]) -> tuple[str, int]:
        index = int(output.argmax())
        return LETTERS[index], index
