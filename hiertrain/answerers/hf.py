"""`HFAnswerer`: a transformers (V)LLM in this process, answering through the shared-prefix cache.

Each item's prompts are its chat texts in the model's own template (`render_chat`, under the
run's system-prompt policy); the engine (`hiertrain.vlm.prefix_cache.SharedPrefixAnswerer`, or
`GlobalPrefixAnswerer` when the condition opens every prompt with one run-wide text) encodes each
image once, prefills the common prefix once and scores or generates every level's suffix.
Two protocols answer differently: `inference: stepwise` (the model's own replies as earlier chat
turns, `hiertrain.vlm.stepwise`) and `chat: false` (the paper's raw base-LLM prompt, answered
whole: the prompts share no special-token prefix).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hiertrain.answerers.base import Answerer, Item, sample_prediction
from hiertrain.metrics.predictions import SamplePrediction
from hiertrain.protocol.prompts import LETTERS
from hiertrain.protocol.protocol import QuestionProtocol
from hiertrain.taxonomy.images import shrink_longest_side


@dataclass(frozen=True)
class HFSettings:
    """What an in-process model's answer depends on beyond the question protocol (one object, as
    `VLLMEvaluator`'s arguments give it; LoRA validation uses the defaults: letter logits)."""

    answer: str = "logits"  # "logits" | "generate"
    answer_parser: str = "strict"  # how a generated reply becomes a letter
    max_image_side: int | None = None  # images whose longest side is larger are shrunk first
    system_prompt: str = "paper"  # hiertrain.protocol.prompts.with_system_prompt policies
    default_system: str | None = None  # the model's own system message (system_prompt: model_default)
    chat: bool = True  # False: the raw prompt `question + " Answer:"`, no chat template


class HFAnswerer(Answerer):
    """A transformers model (the `engine` around it) answering under `protocol` and `settings`."""

    backend = "transformers"

    def __init__(
        self, engine: Any, processor: Any, protocol: QuestionProtocol, settings: HFSettings = HFSettings(), matcher: Any = None
    ) -> None:
        super().__init__(protocol, settings.answer, settings.answer_parser, matcher)
        self.engine, self.processor, self.settings = engine, processor, settings

    @property
    def settings(self) -> HFSettings:
        return self._settings

    @settings.setter
    def settings(self, value: HFSettings) -> None:
        """New settings are the whole of them: the answer kind and parser follow."""
        self._settings = value
        self.answer_kind, self.answer_parser = value.answer, value.answer_parser

    # ---------------------------------------------------------------- requests

    def messages_of(self, messages: list[dict]) -> list[dict]:
        """One question's chat messages under the run's `system_prompt`."""
        from hiertrain.protocol.prompts import with_system_prompt

        if self.settings.system_prompt == "paper":
            return messages
        return with_system_prompt(messages, self.settings.system_prompt, self.settings.default_system)

    def prompts(self, item: Item) -> list[str]:
        """Each prompt's full text in the model's own template (circular: each level's rotations
        right after it; joint: the one prompt asking every level; raw: `question + " Answer:"`)."""
        from hiertrain.vlm.prefix_cache import render_chat

        if not self.settings.chat:
            from hiertrain.protocol.prompts import raw_prompt

            return [raw_prompt(lq.question) for lq in item["levels"]]
        return [render_chat(self.processor, self.messages_of(messages)) for messages in super().prompts(item)]

    def image_refusal(self, item: Item) -> str | None:
        """The processor's refusal of the image as it will be shown (after `max_image_side`)."""
        from hiertrain.vlm.image_check import processor_refusal

        return processor_refusal(self.engine.processor, shrunk_size(item["image"].size, self.settings.max_image_side))

    def _batch(self, items: list[Item]) -> list[Any]:
        from hiertrain.vlm.prefix_cache import ImagePrompts

        return [ImagePrompts(shrink_longest_side(item["image"], self.settings.max_image_side), self.prompts(item)) for item in items]

    # ---------------------------------------------------------------- outputs

    def logits(self, items: list[Item]) -> list[list[Any]]:
        return [list(rows) for rows in self.engine.logits(self._batch(items))]

    def generate(self, items: list[Item]) -> list[list[str]]:
        return self.engine.generate(self._batch(items))

    def pick(self, output: Any, options: list[str]) -> tuple[str, int]:
        index = int(self.engine.letter_scores(output, len(options)).argmax())
        return LETTERS[index], index

    def answer(self, items: list[Item]) -> list[SamplePrediction]:
        if self.protocol.inference == "stepwise":
            return self._answer_stepwise(items)
        if not self.settings.chat:  # raw prompts share no special-token prefix: each answered whole (the reference path)
            return self._answer_raw(items)
        return super().answer(items)

    def _answer_stepwise(self, items: list[Item]) -> list[SamplePrediction]:
        """Each image's levels as one chat, level k after the model's own replies to levels < k
        (`hiertrain.vlm.stepwise`: the KV cache grows turn by turn)."""
        from hiertrain.protocol.conditions import turn_messages
        from hiertrain.vlm.prefix_cache import render_chat
        from hiertrain.vlm.stepwise import Conversation, StepwiseAnswerer

        def renderer(levels):
            def render(replies: list[str]) -> str:
                later = [lq.question for lq in levels[1 : len(replies) + 1]]
                return render_chat(self.processor, self.messages_of(turn_messages(levels[0].messages, later, replies)))

            return render

        conversations = [
            Conversation(shrink_longest_side(item["image"], self.settings.max_image_side), renderer(item["levels"]),
                         [len(lq.options) for lq in item["levels"]])
            for item in items
        ]  # fmt: skip
        generate = self.answer_kind == "generate"
        out = []
        for item, turns in zip(items, StepwiseAnswerer(self.engine).run(conversations, generate)):
            answers = [
                (t.reply, self.letter_of(t.reply, lq.options) if generate else LETTERS.index(t.reply))
                for lq, t in zip(item["levels"], turns, strict=True)
            ]
            out.append(sample_prediction(item, self.mode, answers))
        return out

    def _answer_raw(self, items: list[Item]) -> list[SamplePrediction]:
        out = []
        for item in items:
            answers = []
            for lq, prompt in zip(item["levels"], self.prompts(item)):
                if self.answer_kind == "logits":
                    row = self.engine.full_forward_logits(None, prompt)
                    index = int(self.engine.letter_scores(row[None], len(lq.options))[0].argmax())
                    answers.append((LETTERS[index], index))
                else:
                    reply = self.engine.full_generate(None, prompt)
                    answers.append((reply, self.letter_of(reply, lq.options)))
            out.append(sample_prediction(item, self.mode, answers))
        return out


def shrunk_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """(width, height) after `shrink_longest_side`: scaled by `max_side / longest` when larger."""
    if max_side is None or max(size) <= max_side:
        return size
    scale = max_side / max(size)
    return int(size[0] * scale), int(size[1] * scale)
