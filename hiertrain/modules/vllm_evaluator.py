"""Frozen vision LLMs (and plain LLMs) answering the question bank: `hiertrain test`.

Any HF image-text-to-text model (Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision, InternVL-hf, ...) or
causal LM loads by hub id or local path through `hiertrain.vlm.loading.load_vllm`. All levels of an
image share one vision encoding and one prefill of the common prefix (`SharedPrefixAnswerer`).

- `answer: logits` (default): argmax of the next-token logits over the option letters.
- `answer: generate`: the paper's protocol, greedy up to `max_new_tokens` (5) tokens, the letter
  read with `answers.parse_letter`; anything else is unparseable, counted wrong and reported.

Models too large for one GPU: pass `device_map: auto` (accelerate places the layers over the
visible GPUs; run with `--trainer.devices 1`, Lightning then leaves the model where it is) or
shard with `--trainer.strategy fsdp`.
"""

from __future__ import annotations

from typing import Any, Literal

from hiertrain.core.answers import parse_letter
from hiertrain.modules.evaluator_base import QuestionEvaluator, sample_prediction
from hiertrain.core.predictions import SamplePrediction
from hiertrain.core.prompts import LETTERS


class VLLMEvaluator(QuestionEvaluator):
    """Answer each image's levels with a frozen (V)LLM.

    Args:
        pretrained: hub id or local directory (`hiertrain tiny` output works).
        answer: "logits" (letter logits, one forward) or "generate" (the paper's protocol).
        dtype: "float32", "bfloat16", "float16" or "auto".
        attn_implementation: "sdpa", "eager", "flash_attention_2", ...
        max_new_tokens: reply length for `generate`.
        device_map: accelerate device map (e.g. "auto") for models larger than one device.
        run_name: run directory name inside `--trainer.default_root_dir`.
    """

    def __init__(
        self,
        pretrained: str,
        answer: Literal["logits", "generate"] = "logits",
        dtype: str = "float32",
        attn_implementation: str | None = "sdpa",
        max_new_tokens: int = 5,
        device_map: str | None = None,
        run_name: str | None = None,
    ) -> None:
        super().__init__(pretrained, run_name)
        if answer not in ("logits", "generate"):
            from hiertrain.core.errors import HierError

            raise HierError(f"answer {answer!r} is not 'logits' or 'generate'")
        self.answer_kind = answer
        self.model_dtype, self.attn_implementation = dtype, attn_implementation
        self.max_new_tokens, self.device_map = max_new_tokens, device_map
        self.model: Any = None
        self._placed: dict[str, Any] = {}  # a device_map model, kept out of Lightning's .to()
        self.processor: Any = None
        self.answerer: Any = None

    def configure_model(self) -> None:
        if self.answerer is not None:
            return
        from hiertrain.vlm.loading import load_vllm
        from hiertrain.vlm.prefix_cache import SharedPrefixAnswerer

        model, self.processor = load_vllm(self.pretrained, self.model_dtype, self.attn_implementation, self.device_map)
        model.requires_grad_(False)
        if self.device_map is None:
            self.model = model
        else:
            self._placed["model"] = model
        self.answerer = SharedPrefixAnswerer(model, self.processor, self.max_new_tokens)

    def prompts_of(self, item: dict[str, Any]) -> list[str]:
        """Each asked level's full chat prompt, in the model's own template."""
        from hiertrain.vlm.prefix_cache import render_chat

        return [render_chat(self.processor, lq.messages) for lq in item["levels"]]

    def answer_items(self, items: list[dict[str, Any]], mode: str) -> list[SamplePrediction]:
        from hiertrain.vlm.prefix_cache import ImagePrompts

        batch = [ImagePrompts(item["image"], self.prompts_of(item)) for item in items]
        out = []
        if self.answer_kind == "logits":
            for item, logits in zip(items, self.answerer.logits(batch)):
                answers = []
                for lq, row in zip(item["levels"], logits):
                    index = int(self.answerer.letter_scores(row, len(lq.options)).argmax())
                    answers.append((LETTERS[index], index))
                out.append(sample_prediction(item, mode, answers))
        else:
            for item, replies in zip(items, self.answerer.generate(batch)):
                answers = [(reply, parse_letter(reply, lq.options)) for lq, reply in zip(item["levels"], replies)]
                out.append(sample_prediction(item, mode, answers))
        return out
