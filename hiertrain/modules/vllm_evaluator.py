"""Frozen vision LLMs (and plain LLMs) answering the question bank: `hiertrain test`.

Any HF image-text-to-text model (Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision, InternVL-hf, ...) or
causal LM loads by hub id or local path through `hiertrain.vlm.loading.load_vllm`. All levels of an
image share one vision encoding and one prefill of the common prefix (`SharedPrefixAnswerer`),
and the images of a batch run together: one vision pass + one prefill of their right-padded
prefixes, then all their levels as one batch, in steps of at most `max_batch_tokens` KV-cache
slots (default per device: CPU 32768, CUDA 2048 per GiB of device memory). The data batch
(`--data.batch_size`) is how many images one step may hold; the token budget bounds memory.

- `answer: logits` (default): argmax of the next-token logits over the option letters.
- `answer: generate`: the paper's protocol, greedy up to `max_new_tokens` tokens with the
  checkpoint's own generation config (as `model.generate(do_sample=False)`), the letter read with
  `answer_parser`: "strict" (`answers.parse_letter`; anything else is unparseable, counted wrong
  and reported) or "paper" (`answers.paper_letter`, the paper's first-letter-anywhere rule, for
  reproducing its numbers).

Question conditions (`data.condition`, hiertrain.protocol.conditions): plain, taxonomy and bio_cot
answer like plain questions; cot (generate) reads the final letter (`conditions.final_letter`
under the strict parser); binary (generate) asks one yes/no statement per option, read and scored
as the paper's `utils/metric_binary.py`, each statement's text and reply kept in the level's
`detail`; open (generate) matches the reply to the taxonomy's nodes (hiertrain.protocol.open_set).

Per-model protocol settings (the paper's, set in configs/models and configs/paper, recorded in
run.json): `max_image_side` (Qwen: longest side > 1680 px shrunk first, LANCZOS),
`processor_kwargs` (Qwen `min_pixels`/`max_pixels`, InternVL-hf `max_patches`), and
`image_aspect_ratio: pad` (LLaVA-OneVision: one padded square tile, no any-res grid).

Models too large for one GPU: pass `device_map: auto` (accelerate places the layers over the
visible GPUs; run with `--trainer.devices 1`, Lightning then leaves the model where it is) or
shard with `--trainer.strategy fsdp`.
"""

from __future__ import annotations

from typing import Any, Literal

from hiertrain.protocol import conditions
from hiertrain.base.errors import HierError
from hiertrain.modules.evaluator_base import QuestionEvaluator, sample_prediction
from hiertrain.metrics.predictions import SamplePrediction
from hiertrain.protocol.prompts import LETTERS

ANSWER_PARSERS = ("strict", "paper")
ASPECT_RATIOS = ("pad",)

from hiertrain.taxonomy.images import shrink_longest_side  # noqa: E402  (one copy, shared with LoRA tuning)

def shrunk_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """(width, height) after `shrink_longest_side`: scaled by `max_side / longest` when larger."""
    if max_side is None or max(size) <= max_side:
        return size
    scale = max_side / max(size)
    return int(size[0] * scale), int(size[1] * scale)


class VLLMEvaluator(QuestionEvaluator):
    """Answer each image's levels with a frozen (V)LLM (under any question condition).

    Args:
        pretrained: hub id or local directory (`hiertrain tiny` output works).
        answer: "logits" (letter logits, one forward) or "generate" (the paper's protocol).
        dtype: "float32", "bfloat16", "float16" or "auto".
        attn_implementation: "sdpa", "eager", "flash_attention_2", ...
        max_new_tokens: reply length for `generate` (the paper: Qwen image 10 on CUB/ImageNet/Food,
            5 on iNat and in text mode; LLaVA-OV image 10, text 5; InternVL 5).
        device_map: accelerate device map (e.g. "auto") for models larger than one device.
        max_batch_tokens: KV-cache slots (suffix rows x padded prompt length) per forward step;
            None = the device's default (`hiertrain.vlm.prefix_cache.default_max_batch_tokens`).
        run_name: run directory name inside `--trainer.default_root_dir`.
        answer_parser: how a generated reply becomes a letter: "strict" or "paper".
        max_image_side: shrink images whose longest side is larger first (Qwen in the paper: 1680).
        processor_kwargs: passed to `AutoProcessor.from_pretrained` (e.g. `min_pixels`, `max_pixels`).
        image_aspect_ratio: "pad" = LLaVA-OneVision's one padded tile per image (the paper's
            `overwrite_config: {image_aspect_ratio: pad}`); None = the processor's default.
        system_prompt: "paper" (default: hiertrain's system prompt, the paper's Qwen scripts'),
            "model_default" (the model's own default system message: InternVL's conversation
            template's, as the paper's `model.chat`; for Qwen/LLaVA no system turn, so their chat
            template's default applies), "none" (no system turn) or a system text. In run.json
            and the identity (`hiertrain.protocol.prompts.with_system_prompt`).
        chat: false = no chat template: the raw prompt `question + " Answer:"` of the paper's
            base-LLM runs (evaluation/og_llm/qwen/eval_text_og_natural.py:168-169); text mode
            only, answered without prefix sharing (the prompts share no special token).
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
        answer_parser: Literal["strict", "paper"] = "strict",
        max_image_side: int | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        image_aspect_ratio: str | None = None,
        max_batch_tokens: int | None = None,
        system_prompt: str = "paper",
        chat: bool = True,
    ) -> None:
        super().__init__(pretrained, run_name)
        from hiertrain.protocol.prompts import check_system_prompt

        check_system_prompt(system_prompt)
        if not chat and system_prompt != "paper":
            raise HierError("chat: false sends no chat template, so no system prompt: leave system_prompt at 'paper'")
        if answer not in ("logits", "generate"):
            raise HierError(f"answer {answer!r} is not 'logits' or 'generate'")
        if answer_parser not in ANSWER_PARSERS:
            raise HierError(f"answer_parser {answer_parser!r} is not one of {', '.join(ANSWER_PARSERS)}")
        if image_aspect_ratio is not None and image_aspect_ratio not in ASPECT_RATIOS:
            raise HierError(f"image_aspect_ratio {image_aspect_ratio!r} is not one of {', '.join(ASPECT_RATIOS)} (or null)")
        if answer == "generate" and max_new_tokens < 1:
            raise HierError(f"model.max_new_tokens must be at least 1 with answer: generate (a reply of {max_new_tokens} tokens holds no letter)")
        if max_image_side is not None and max_image_side < 1:
            raise HierError(f"max_image_side must be a positive number of pixels, got {max_image_side}")
        self.answer_kind = answer
        self.model_dtype, self.attn_implementation = dtype, attn_implementation
        self.max_new_tokens, self.device_map = max_new_tokens, device_map
        self.answer_parser, self.max_image_side = answer_parser, max_image_side
        self.processor_kwargs = dict(processor_kwargs or {})
        self.image_aspect_ratio = image_aspect_ratio
        self.max_batch_tokens = max_batch_tokens
        self.system_prompt, self.chat = system_prompt, chat
        self._default_system: list[str | None] = []  # the family's, resolved once from the config
        self.model: Any = None
        self._placed: dict[str, Any] = {}  # a device_map model, kept out of Lightning's .to()
        self.processor: Any = None
        self.answerer: Any = None

    supported_conditions = conditions.REGISTRY  # live: a condition registered later is answered too
    supported_inference = conditions.INFERENCE_MODES
    supports_circular = True

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if not self.chat and (self.meta["mode"] != "text" or not self.condition.raw_prompt):
            raise HierError("chat: false (the paper's base-LLM raw prompt) is for plain text-mode questions only")
        inference = self.meta.get("inference", "independent")
        if not self.chat and (inference != "independent" or self.meta.get("circular")):
            raise HierError("chat: false (the paper's base-LLM raw prompt) asks independent questions only, not circular ones")
        if inference == "joint" and self.answer_kind != "generate":
            raise HierError("inference 'joint' needs answer: generate (the reply names a letter per level)")

    def protocol(self) -> dict[str, Any]:
        """The per-model protocol settings, as recorded in run.json."""
        return {
            "answer_parser": self.answer_parser if self.answer_kind == "generate" else None,
            "max_new_tokens": self.max_new_tokens if self.answer_kind == "generate" else None,
            "max_image_side": self.max_image_side,
            "processor_kwargs": self.processor_kwargs,
            "image_aspect_ratio": self.image_aspect_ratio,
            "system_prompt": self.system_prompt,
            "system_text": self.system_text() if self.chat else None,
            "chat": self.chat,
        }

    def model_default_system(self) -> str | None:
        """The model family's own default system message (`ModelFamily.default_system_message`)."""
        if not self._default_system:
            from transformers import AutoConfig

            from hiertrain.vlm.family import family_of

            try:
                config = AutoConfig.from_pretrained(self.pretrained)
            except (OSError, ValueError) as err:
                raise HierError(f"{self.pretrained}: cannot read the model config ({err})") from None
            self._default_system.append(family_of(config).default_system_message)
        return self._default_system[0]

    def system_text(self) -> str | None:
        """What the system turn says under `system_prompt` (None: no system turn; "paper": as built)."""
        if self.system_prompt == "paper":
            # A frozen label, not an import path: run.json records it and it is identity, so it keeps the
            # spelling from before the core/ regroup (the texts now live in hiertrain.protocol.prompts) and
            # runs started before it still resume.
            return "as built: hiertrain.core.prompts.SYSTEM_IMAGE / SYSTEM_TEXT, or the condition's"
        if self.system_prompt == "model_default":
            return self.model_default_system()
        return None if self.system_prompt == "none" else self.system_prompt

    def messages_of(self, messages: list[dict]) -> list[dict]:
        """One question's chat messages under this model's `system_prompt`."""
        from hiertrain.protocol.prompts import with_system_prompt

        if self.system_prompt == "paper":
            return messages
        default = self.model_default_system() if self.system_prompt == "model_default" else None
        return with_system_prompt(messages, self.system_prompt, default)

    def run_meta(self, dm) -> dict[str, Any]:
        return {**super().run_meta(dm), **self.protocol()}

    def run_settings(self) -> dict[str, Any]:
        """dtype and attention kernel decide the logits (the protocol keys are top-level)."""
        return {"dtype": self.model_dtype, "attn_implementation": self.attn_implementation}

    def configure_model(self) -> None:
        if self.answerer is not None:
            return
        from hiertrain.vlm.loading import load_vllm
        from hiertrain.vlm.global_prefix import GlobalPrefixAnswerer
        from hiertrain.vlm.prefix_cache import SharedPrefixAnswerer

        model, self.processor = load_vllm(
            self.pretrained, self.model_dtype, self.attn_implementation, self.device_map, self.processor_kwargs
        )
        model.requires_grad_(False)
        if self.device_map is None:
            self.model = model
        else:
            self._placed["model"] = model
        processor = self.processor
        if self.image_aspect_ratio == "pad":
            from hiertrain.vlm.padded_tile import PaddedTileProcessor

            processor = PaddedTileProcessor(self.processor)
        # The taxonomy condition's system turn opens every prompt of the run: prefilled once per run.
        if self.condition.run_wide_prefix:
            self._check_context_fits(model)
        kind = GlobalPrefixAnswerer if self.condition.run_wide_prefix else SharedPrefixAnswerer
        self.answerer = kind(model, processor, self.max_new_tokens, self.max_batch_tokens)

    def _check_context_fits(self, model: Any) -> None:
        """Refuse, before any step, a taxonomy longer than the model's context: every prompt would
        exceed it (minutes of prefill per step, then out-of-range positions or memory)."""
        from hiertrain.vlm.family import family_of

        dm = self._datamodule()
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        limit = getattr(config, "max_position_embeddings", None)
        if not isinstance(limit, int) or dm.context is None:
            return
        tokenizer = family_of(model).tokenizer(self.processor)
        count = len(tokenizer(dm.context, add_special_tokens=False)["input_ids"])
        if count >= limit:
            raise HierError(
                f"{dm.taxonomy_path}: condition 'taxonomy' puts {count:,} tokens of taxonomy in every prompt, more than "
                f"the context of {self.pretrained} ({limit:,} tokens, max_position_embeddings); use a smaller taxonomy"
            )

    def image_refusal(self, item: dict[str, Any]) -> str | None:
        """The processor's refusal of the image as it will be shown (after `max_image_side`)."""
        from hiertrain.vlm.image_check import processor_refusal

        return processor_refusal(self.answerer.processor, shrunk_size(item["image"].size, self.max_image_side))

    def prompts_of(self, item: dict[str, Any]) -> list[str]:
        """Each asked level's full chat prompt, in the model's own template (circular: each level's
        rotations right after it; joint: the one prompt asking every level)."""
        from hiertrain.vlm.prefix_cache import render_chat

        if not self.chat:
            from hiertrain.protocol.prompts import raw_prompt

            return [raw_prompt(lq.question) for lq in item["levels"]]
        if self.condition.per_statement:  # binary: one prompt per statement, levels in order
            return [
                render_chat(self.processor, self.messages_of(messages)) for lq in item["levels"] for _, messages in lq.statements
            ]
        if self.meta.get("inference") == "joint":
            return [render_chat(self.processor, self.messages_of(item["levels"][0].messages))] if item["levels"] else []
        return [
            render_chat(self.processor, self.messages_of(messages))
            for lq in item["levels"]
            for messages in (lq.messages, *(rot.messages for rot in lq.rotations))
        ]

    def request_texts(self, item: dict[str, Any]) -> list[str]:
        """The request digest's texts: exactly the chat texts the model is given (`prompts_of`)."""
        return self.prompts_of(item)

    def answer_items(self, items: list[dict[str, Any]], mode: str) -> list[SamplePrediction]:
        from hiertrain.vlm.prefix_cache import ImagePrompts

        if self.meta.get("inference") == "stepwise":
            return self._answer_stepwise(items, mode)
        batch = [ImagePrompts(shrink_longest_side(item["image"], self.max_image_side), self.prompts_of(item)) for item in items]
        if not self.chat:  # raw prompts share no special-token prefix: each answered whole (the reference path)
            return self._answer_raw(items, batch, mode)
        out = []
        if self.answer_kind == "logits":
            for item, logits in zip(items, self.answerer.logits(batch)):
                out.append(self._closed_prediction(item, mode, list(logits), self._logit_answer))
        else:
            for item, replies in zip(items, self.answerer.generate(batch)):
                if not self.condition.lettered:  # binary, open: read by the condition
                    out.append(self.replies_prediction(item, mode, replies))
                elif self.meta.get("inference") == "joint":
                    out.append(self.joint_prediction(item, mode, replies))
                else:
                    out.append(self._closed_prediction(item, mode, replies, lambda r, o: (r, self.letter_of(r, o))))
        return out

    def _answer_stepwise(self, items: list[dict[str, Any]], mode: str) -> list[SamplePrediction]:
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
            Conversation(shrink_longest_side(item["image"], self.max_image_side), renderer(item["levels"]),
                         [len(lq.options) for lq in item["levels"]])
            for item in items
        ]  # fmt: skip
        generate = self.answer_kind == "generate"
        out = []
        for item, turns in zip(items, StepwiseAnswerer(self.answerer).run(conversations, generate)):
            answers = [
                (t.reply, self.letter_of(t.reply, lq.options) if generate else LETTERS.index(t.reply))
                for lq, t in zip(item["levels"], turns, strict=True)
            ]
            out.append(sample_prediction(item, mode, answers))
        return out

    def _logit_answer(self, row: Any, options: list[str]) -> tuple[str, int]:
        index = int(self.answerer.letter_scores(row, len(options)).argmax())
        return LETTERS[index], index

    def _closed_prediction(self, item: dict[str, Any], mode: str, outputs: list[Any], read) -> SamplePrediction:
        """One output per prompt of `prompts_of` (each level, then its rotations) -> the sample;
        `read(output, options) -> (reply, option index | None)`. A circular level keeps rotation
        0's answer and is right only if every rotation is (`hiertrain.metrics.circular.combine`)."""
        from hiertrain.metrics.circular import combine, rotation_record

        answers, records, start = [], [], 0
        for lq in item["levels"]:
            asked = [lq.options, *(rot.options for rot in lq.rotations)]
            mine = [read(o, opts) for o, opts in zip(outputs[start : start + len(asked)], asked, strict=True)]
            start += len(asked)
            answers.append(mine[0])
            records.append([rotation_record(opts, lq.truth, *a) for opts, a in zip(asked, mine)] if lq.rotations else None)
        if start != len(outputs):
            raise HierError(f"sample {item['sample_id']}: {len(outputs)} answers for {start} questions")
        prediction = sample_prediction(item, mode, answers)
        asked_levels = [lv for lv in prediction.levels if lv.asked]
        for lv, recs in zip(asked_levels, records, strict=True):
            if recs is not None:
                combine(lv, recs)
        return prediction

    def _answer_raw(self, items: list[dict[str, Any]], batch: list[Any], mode: str) -> list[SamplePrediction]:
        out = []
        for item, prompts in zip(items, batch):
            answers = []
            for lq, prompt in zip(item["levels"], prompts.prompts):
                if self.answer_kind == "logits":
                    row = self.answerer.full_forward_logits(None, prompt)
                    index = int(self.answerer.letter_scores(row[None], len(lq.options))[0].argmax())
                    answers.append((LETTERS[index], index))
                else:
                    reply = self.answerer.full_generate(None, prompt)
                    answers.append((reply, self.letter_of(reply, lq.options)))
            out.append(sample_prediction(item, mode, answers))
        return out

    def joint_prediction(self, item: dict[str, Any], mode: str, replies: list[str]) -> SamplePrediction:
        """The one reply to the joint question, read line by line (`answers.joint_letters`); every
        level keeps the whole reply and the joint question, so a score can re-read it."""
        from hiertrain.protocol.answers import joint_letters

        levels = item["levels"]
        if len(replies) != (1 if levels else 0):
            raise HierError(f"sample {item['sample_id']}: {len(replies)} replies to one joint question")
        reply = replies[0] if replies else ""
        picks = joint_letters(reply, [lq.name for lq in levels], [lq.options for lq in levels])
        return sample_prediction(item, mode, [(reply, index) for index in picks])
