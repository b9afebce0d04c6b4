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

from hiertrain.answerers.hf import HFAnswerer, HFSettings
from hiertrain.protocol import conditions
from hiertrain.base.errors import HierError
from hiertrain.modules.evaluator_base import QuestionEvaluator
from hiertrain.taxonomy.images import shrink_longest_side  # noqa: F401  (one copy, shared with LoRA tuning)

ANSWER_PARSERS = ("strict", "paper")
ASPECT_RATIOS = ("pad",)


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
        protocol = self.protocol
        if not self.chat and (protocol.mode != "text" or not self.condition.raw_prompt):
            raise HierError("chat: false (the paper's base-LLM raw prompt) is for plain text-mode questions only")
        inference = protocol.inference
        if not self.chat and (inference != "independent" or protocol.circular):
            raise HierError("chat: false (the paper's base-LLM raw prompt) asks independent questions only, not circular ones")
        if inference == "joint" and self.answer_kind != "generate":
            raise HierError("inference 'joint' needs answer: generate (the reply names a letter per level)")

    def model_protocol(self) -> dict[str, Any]:
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

    def settings(self) -> HFSettings:
        """This evaluator's answer settings, as the answerer takes them (one object)."""
        default = self.model_default_system() if self.system_prompt == "model_default" else None
        return HFSettings(self.answer_kind, self.answer_parser, self.max_image_side, self.system_prompt, default, self.chat)

    def run_meta(self, dm) -> dict[str, Any]:
        return {**super().run_meta(dm), **self.model_protocol()}

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
        engine = kind(model, processor, self.max_new_tokens, self.max_batch_tokens)
        self.answerer = HFAnswerer(engine, self.processor, self.protocol, self.settings(), self.matcher)

    def _check_context_fits(self, model: Any) -> None:
        """Refuse, before any step, a taxonomy longer than the model's context: every prompt would
        exceed it (minutes of prefill per step, then out-of-range positions or memory)."""
        from hiertrain.vlm.family import family_of

        dm = self._datamodule()
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        limit = getattr(config, "max_position_embeddings", None)
        if not isinstance(limit, int) or self.protocol.context is None:
            return
        tokenizer = family_of(model).tokenizer(self.processor)
        count = len(tokenizer(self.protocol.context, add_special_tokens=False)["input_ids"])
        if count >= limit:
            raise HierError(
                f"{dm.taxonomy_path}: condition 'taxonomy' puts {count:,} tokens of taxonomy in every prompt, more than "
                f"the context of {self.pretrained} ({limit:,} tokens, max_position_embeddings); use a smaller taxonomy"
            )

    def prompts_of(self, item: dict[str, Any]) -> list[str]:
        """Each asked level's full chat prompt, in the model's own template (`HFAnswerer.prompts`)."""
        return self.answerer.prompts(item)
