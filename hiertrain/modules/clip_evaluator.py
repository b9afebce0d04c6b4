"""The paper's non-LLM baselines: open_clip models (OpenCLIP, SigLIP, BioCLIP) pick the option
whose text ("a photo of a {label}.") is most similar to the image.

Each image is encoded once for all its levels; option texts are encoded once per run and kept
(the same labels recur across images), so the cost is about one image forward per sample.
"""

from __future__ import annotations

from typing import Any

import torch

from hiertrain.base.errors import HierError
from hiertrain.modules.evaluator_base import QuestionEvaluator, sample_prediction
from hiertrain.metrics.predictions import SamplePrediction
from hiertrain.protocol.prompts import LETTERS
from hiertrain.protocol.prompts import CLIP_TEXT_TEMPLATE


class CLIPEvaluator(QuestionEvaluator):
    """Zero-shot choice among each level's options by image-text cosine similarity.

    Args:
        pretrained: open_clip name (`ViT-L-14:openai`, `hf-hub:timm/ViT-SO400M-14-SigLIP`,
            `hf-hub:imageomics/bioclip`) or a local dir from `hiertrain tiny --arch clip`.
        template: option text; `{label}` is replaced by the option.
        run_name: run directory name inside `--trainer.default_root_dir`.
    """

    answer_kind = "clip"

    def __init__(self, pretrained: str, template: str = CLIP_TEXT_TEMPLATE, run_name: str | None = None) -> None:
        super().__init__(pretrained, run_name)
        if "{label}" not in template:
            raise HierError(f"CLIP template {template!r} has no {{label}} placeholder")
        self.template = template
        self.model: Any = None
        self.preprocess: Any = None
        self.tokenizer: Any = None
        self._text_cache: dict[str, torch.Tensor] = {}

    def run_settings(self) -> dict[str, Any]:
        """The option template decides the text embeddings."""
        return {"backend": "open_clip", "template": self.template}

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from hiertrain.vlm.openclip import load_open_clip

        self.model, self.preprocess, self.tokenizer = load_open_clip(self.pretrained)
        self.model.requires_grad_(False)

    def run_meta(self, dm) -> dict[str, Any]:
        if dm.mode != "image":
            raise HierError("CLIPEvaluator answers image questions only (use --data.mode image)")
        return {**super().run_meta(dm), "template": self.template}

    @torch.no_grad()
    def text_features(self, labels: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings of the options, [n, d], cached per label."""
        new = [label for label in dict.fromkeys(labels) if label not in self._text_cache]
        if new:
            tokens = self.tokenizer([self.template.format(label=label) for label in new]).to(self.device)
            features = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
            self._text_cache.update(zip(new, features))
        return torch.stack([self._text_cache[label] for label in labels])

    def request_texts(self, item: dict[str, Any]) -> list[list[str]]:
        """The request digest's texts: each asked level's option prompts, as the text encoder sees them."""
        return [[self.template.format(label=label) for label in lq.options] for lq in item["levels"]]

    @torch.no_grad()
    def answer_items(self, items: list[dict[str, Any]], mode: str) -> list[SamplePrediction]:
        pixels = torch.stack([self.preprocess(item["image"]) for item in items]).to(self.device)
        images = torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)
        out = []
        for item, image in zip(items, images):
            answers = []
            for lq in item["levels"]:
                index = int((self.text_features(lq.options) @ image).argmax())
                answers.append((LETTERS[index], index))
            out.append(sample_prediction(item, mode, answers, asks_text=False))
        return out
