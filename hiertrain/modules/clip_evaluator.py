"""The paper's non-LLM baselines: open_clip models (OpenCLIP, SigLIP, BioCLIP) pick the option
whose text ("a photo of a {label}.") is most similar to the image.

Each image is encoded once for all its levels; option texts are encoded once per run and kept
(the same labels recur across images), so the cost is about one image forward per sample.
"""

from __future__ import annotations

from typing import Any

import torch

from hiertrain.answerers.clip import CLIPAnswerer, CLIPSettings
from hiertrain.base.errors import HierError
from hiertrain.modules.evaluator_base import QuestionEvaluator
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

    @property
    def template(self) -> str:
        return self._template

    @template.setter
    def template(self, value: str) -> None:
        """A new template reaches the answerer too (its text embeddings are then recomputed)."""
        self._template = value
        if self.answerer is not None:
            self.answerer.configure(CLIPSettings(value))

    def run_settings(self) -> dict[str, Any]:
        """The option template decides the text embeddings."""
        return {"backend": "open_clip", "template": self.template}

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from hiertrain.vlm.openclip import load_open_clip

        self.model, self.preprocess, self.tokenizer = load_open_clip(self.pretrained)
        self.model.requires_grad_(False)
        self.answerer = CLIPAnswerer(self.model, self.preprocess, self.tokenizer, self.protocol, CLIPSettings(self.template))

    def run_meta(self, dm) -> dict[str, Any]:
        if dm.protocol.mode != "image":
            raise HierError("CLIPEvaluator answers image questions only (use --data.mode image)")
        return {**super().run_meta(dm), "template": self.template}

    def text_features(self, labels: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings of the options, [n, d] (`CLIPAnswerer.text_features`)."""
        return self.answerer.text_features(labels)
