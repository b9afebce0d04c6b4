"""One class per model family: everything that differs between Qwen-VL, LLaVA-OneVision, InternVL
and a plain causal LM lives here, keyed on the HF `config.model_type`.

Callers ask `family_of(model_or_config)` and never test a model type themselves: loading finds
the parts (language model, vision tower, projector) here, the shared-prefix answerer its
positions and state reset, LoRA its anchored target pattern, feature extraction the image-side
sites, and training collation the per-token and image tensors. Adding a family = one subclass
registered with `@register(...)` (see docs/ARCHITECTURE.md, "Adding a model family").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from hiertrain.base.errors import HierError

# emit(site, rows [sum of per-image counts, D], per-image counts) — how image-site hooks report
Emit = Callable[[str, Tensor, list[int]], None]

FAMILIES: dict[str, type[ModelFamily]] = {}
IMAGE_FEATURE_FAMILIES = ("qwen2_5_vl", "llava_onevision", "internvl")


def register(*model_types: str) -> Callable[[type[ModelFamily]], type[ModelFamily]]:
    """Class decorator: the family handles these HF `model_type` values."""

    def add(cls: type[ModelFamily]) -> type[ModelFamily]:
        for model_type in model_types:
            FAMILIES[model_type] = cls
        return cls

    return add


def _is_image_text(model_type: str) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def family_of(model_or_config: Any) -> ModelFamily:
    """The family of a loaded model (anything with `.config`) or of a transformers config.

    Unknown text-only model types get the plain causal-LM family; an unknown image-text model
    is a HierError, since its parts and positions cannot be guessed safely.
    """
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if not isinstance(model_type, str):
        raise HierError(f"{type(model_or_config).__name__}: no config.model_type to pick a model family from")
    cls = FAMILIES.get(model_type)
    if cls is None:
        if getattr(config, "vision_config", None) is not None or _is_image_text(model_type):
            raise HierError(
                f"model type '{model_type}' is an image-text model without a family adapter "
                f"(registered: {', '.join(sorted(FAMILIES))}); add one in hiertrain/vlm/family.py"
            )
        cls = CausalLMFamily
    return cls(model_type)


class ModelFamily:
    """Shared behaviour: the transformers-v5 VLM layout `model.model.{language_model,
    vision_tower, multi_modal_projector}`, 1-D positions, no per-call state.

    The paper's per-model protocol (reply lengths, prompt variants) is not kept here: its one table
    is hiertrain/paper/presets.py (tiles and image sizes: configs/models/), from which
    configs/paper/compose.py writes the presets. `image_max_pixels` is the image
    processor's own pixel bound that `pixel_bounds_kwargs` falls back to (None = the processor's).
    """

    image_max_pixels: int | None = None
    per_token_keys: tuple[str, ...] = ()  # processor outputs aligned with input_ids (besides it)
    text_only = False
    # `system_prompt: model_default`: the model's own default system message; None = send no
    # system turn (the chat template's own default, if it has one, applies).
    default_system_message: str | None = None

    def __init__(self, model_type: str) -> None:
        self.model_type = model_type

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_type!r})"

    def pixel_bounds_kwargs(self, min_pixels: int | None, max_pixels: int | None) -> dict[str, Any]:
        """Processor-call kwargs that bound an image's pixels (Qwen-VL's min/max_pixels); other
        families size images their own way (tiles), so bounds are refused there."""
        raise HierError(f"{self.model_type}: min_pixels / max_pixels are Qwen-VL image settings; this family tiles images itself")

    # ---- parts ---------------------------------------------------------------------------------

    def language_model(self, model: Any) -> Any:
        """The decoder stack (embeddings + layers + norm, no LM head)."""
        return part_at(model, "model.language_model", "language model")

    def vision_tower(self, model: Any) -> Any:
        """The image encoder."""
        return part_at(model, "model.vision_tower", "vision tower")

    def projector(self, model: Any) -> Any:
        """The vision-to-language projector."""
        return part_at(model, "model.multi_modal_projector", "vision-to-language projector")

    # ---- processor -----------------------------------------------------------------------------

    @staticmethod
    def tokenizer(processor: Any) -> Any:
        """The text tokenizer of a VLLM processor (a plain LLM's "processor" is its tokenizer)."""
        return getattr(processor, "tokenizer", processor)

    # ---- positions for the shared-prefix cache -------------------------------------------------

    def prefix_positions(self, model: Any, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(position_ids of the prefix, per-row delta [B, 1] added to text positions after it)."""
        ids = inputs["input_ids"]
        batch, length = ids.shape
        positions = torch.arange(length, device=ids.device).expand(batch, length)
        return positions, torch.zeros(batch, 1, dtype=torch.long, device=ids.device)

    def text_positions(self, positions: Tensor) -> Tensor:
        """Position ids the model takes for text tokens at these (already shifted) positions."""
        return positions

    def reset_state(self, model: Any) -> None:
        """Clear what the model keeps between calls (nothing for most families)."""

    # ---- LoRA ----------------------------------------------------------------------------------

    def lora_pattern(self, model: Any) -> str:
        """PEFT target regex: the language model's q/k/v/o and gate/up/down only, anchored on its
        qualified name so the vision tower's same-named MLPs are never adapted."""
        from hiertrain.vlm.lora_targets import module_prefix, target_pattern

        return target_pattern(module_prefix(model, self.language_model(model)))

    # ---- image-side probing sites --------------------------------------------------------------

    def image_site_dims(self, model: Any) -> tuple[int, int]:
        """Widths of the `vision` and `projector` sites; HierError where not supported."""
        raise HierError(
            f"model type '{self.model_type}': image-side feature extraction supports "
            f"{', '.join(IMAGE_FEATURE_FAMILIES)}; text mode works for any LLM"
        )

    def image_site_hooks(self, model: Any, inputs: dict[str, Tensor], emit: Emit) -> list[Any]:
        """Register forward hooks that `emit` the `vision` and `projector` rows of each image."""
        self.image_site_dims(model)
        return []

    def visual_token_mask(self, model: Any, inputs: dict[str, Tensor]) -> Tensor:
        """[B, T] True at the positions whose input embedding is a visual token."""
        return inputs["input_ids"] == model.config.image_token_id

    # ---- training batches ----------------------------------------------------------------------

    def batch_image_tensors(self, examples: list[dict[str, Tensor]], keys: list[str]) -> dict[str, Tensor]:
        """Per-image processor tensors of single-image examples -> one batch (concatenated)."""
        return {key: torch.cat([e[key] for e in examples], 0) for key in keys}


def part_at(model: Any, path: str, what: str) -> Any:
    """`model`'s submodule at dotted `path`; HierError naming `what` when it is not there."""
    obj = model
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            raise HierError(f"{type(model).__name__}: cannot find its {what} at `{path}`")
    return obj


class CausalLMFamily(ModelFamily):
    """A text-only LLM (`AutoModelForCausalLM`): the decoder stack is `model.model`."""

    text_only = True

    def language_model(self, model: Any) -> Any:
        return part_at(model, "model", "language model")

    def vision_tower(self, model: Any) -> Any:
        raise HierError(f"{type(model).__name__}: has no vision tower (a text-only model)")

    def projector(self, model: Any) -> Any:
        raise HierError(f"{type(model).__name__}: has no vision-to-language projector (a text-only model)")

    def image_site_dims(self, model: Any) -> tuple[int, int]:
        raise HierError(f"model type '{self.model_type}' is text-only: use mode: text for its features")


@register("qwen2_vl", "qwen2_5_vl")
class QwenVLFamily(ModelFamily):
    """Qwen2-VL / Qwen2.5-VL: `visual` (its forward already applies the `merger` projector),
    3-row mRoPE whose text positions after an image are shifted by a per-image `rope_delta`."""

    image_max_pixels = 12845056  # paper: the hub processor as saved (preprocessor_config max_pixels)

    def pixel_bounds_kwargs(self, min_pixels: int | None, max_pixels: int | None) -> dict[str, Any]:
        """The image processor's own size bounds (shortest_edge = min_pixels, longest_edge = max_pixels)."""
        size = {"shortest_edge": min_pixels or 56 * 56, "longest_edge": max_pixels or self.image_max_pixels}
        return {"size": size}
    per_token_keys = ("mm_token_type_ids",)

    def vision_tower(self, model: Any) -> Any:
        return part_at(model, "model.visual", "vision tower")

    def projector(self, model: Any) -> Any:
        return part_at(model, "model.visual.merger", "vision-to-language projector")

    def prefix_positions(self, model: Any, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """`get_rope_index` (3-row mRoPE) when there is an image; 1-D text positions otherwise."""
        if inputs.get("image_grid_thw") is None:
            return super().prefix_positions(model, inputs)
        ids = inputs["input_ids"]
        keys = ("mm_token_type_ids", "image_grid_thw", "attention_mask")
        positions, deltas = model.model.get_rope_index(ids, **{k: inputs[k] for k in keys if k in inputs})
        return positions, deltas.view(ids.shape[0], 1).to(ids.device)

    def text_positions(self, positions: Tensor) -> Tensor:
        return positions.unsqueeze(0).expand(3, *positions.shape)

    def reset_state(self, model: Any) -> None:
        """The model caches `rope_deltas` from its last prefill; stale values shift later calls."""
        model.model.rope_deltas = None

    def image_site_dims(self, model: Any) -> tuple[int, int]:
        if self.model_type != "qwen2_5_vl":  # Qwen2-VL: no window order, other config names; untested
            return super().image_site_dims(model)
        vcfg = self.vision_tower(model).config
        return vcfg.hidden_size, vcfg.out_hidden_size

    def image_site_hooks(self, model: Any, inputs: dict[str, Tensor], emit: Emit) -> list[Any]:
        """`vision` = the merger's input patches, `projector` = its output tokens, both per image
        in image (raster) order: Qwen2.5-VL runs its encoder in window order, undone here so
        `last` is the image's last patch / visual token."""
        from transformers.vision_utils import get_vision_window_index

        self.image_site_dims(model)
        grid_thw = inputs["image_grid_thw"]
        vcfg = self.vision_tower(model).config
        unit = vcfg.spatial_merge_size**2
        window_index, _ = get_vision_window_index(grid_thw.cpu(), vcfg.spatial_merge_size, vcfg.window_size, vcfg.patch_size)
        reverse = torch.argsort(window_index).to(grid_thw.device)
        tokens = (grid_thw.prod(-1) // unit).tolist()
        patches = grid_thw.prod(-1).tolist()

        def pre(module, args):
            x = args[0]
            emit("vision", x.reshape(-1, unit, x.shape[-1])[reverse].reshape(-1, x.shape[-1]), patches)

        def post(module, args, output):
            emit("projector", _first(output)[reverse], tokens)

        projector = self.projector(model)
        return [projector.register_forward_pre_hook(pre), projector.register_forward_hook(post)]


@register("llava_onevision")
class LlavaOnevisionFamily(ModelFamily):
    """LLaVA-OneVision (llava-hf): SigLIP tower, 2-layer MLP projector, anyres tiling.

    Image sites: `vision` = the vision feature the projector reads (`vision_feature_layer`,
    after `vision_feature_select_strategy`) for the **base crop** (the whole image at the tower's
    resolution; tiles are left out so every image has the same token count); `projector` = the
    visual tokens in the order they enter the LLM: the projector output packed by the model's own
    `pack_image_features` (base crop, then the unpadded tiles in raster order with the learned
    `image_newline` ending each row), i.e. exactly the LLM's input embeddings at the image tokens.
    `avg` / `last` pool over those tokens as for Qwen; note that the last visual token is always
    the learned `image_newline` (packing appends it, tiled or not), so `last` at `projector` /
    `llm.0` is the same vector for every image (informative only from `llm.1` on).
    """


    def image_site_dims(self, model: Any) -> tuple[int, int]:
        linear = self.projector(model).linear_1
        return linear.in_features, linear.out_features

    def _crops(self, model: Any, inputs: dict[str, Tensor]) -> list[int]:
        from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

        per_sample = inputs.get("batch_num_images")
        if per_sample is not None and bool((per_sample != 1).any()):
            raise HierError("LLaVA-OneVision features: one image per sample expected (multi-image samples are not tiled)")
        cfg = model.config
        return [
            image_size_to_num_patches(size, cfg.image_grid_pinpoints, cfg.vision_config.image_size)
            for size in inputs["image_sizes"]
        ]

    def image_site_hooks(self, model: Any, inputs: dict[str, Tensor], emit: Emit) -> list[Any]:
        inner, crops = model.model, self._crops(model, inputs)
        sizes = inputs["image_sizes"]

        def pre(module, args):
            base = torch.stack([part[0] for part in torch.split(args[0], crops)])  # [images, tokens, D]
            emit("vision", base.reshape(-1, base.shape[-1]), [base.shape[1]] * len(crops))

        def post(module, args, output):
            packed, lengths = inner.pack_image_features(
                torch.split(output, crops), sizes, image_newline=inner.image_newline,
                vision_aspect_ratio=model.config.vision_aspect_ratio,
            )  # fmt: skip
            emit("projector", torch.cat(packed), [int(n) for n in lengths])

        projector = self.projector(model)
        return [projector.register_forward_pre_hook(pre), projector.register_forward_hook(post)]

    def batch_image_tensors(self, examples: list[dict[str, Tensor]], keys: list[str]) -> dict[str, Tensor]:
        """`pixel_values` is [1, crops, C, H, W] per image and the crop count varies with the
        aspect ratio: zero-pad the crop axis (the model reads only each image's own crops)."""
        out = super().batch_image_tensors(examples, [k for k in keys if k != "pixel_values"])
        if "pixel_values" in keys:
            pixels = [e["pixel_values"] for e in examples]
            most = max(p.shape[1] for p in pixels)
            out["pixel_values"] = torch.cat(
                [torch.nn.functional.pad(p, (0, 0, 0, 0, 0, 0, 0, most - p.shape[1])) for p in pixels], 0
            )
        return out


@register("internvl")
class InternVLFamily(ModelFamily):
    """InternVL, transformers-native port (`OpenGVLab/InternVL3-*-hf`): InternViT tower, pixel
    shuffle + MLP projector, dynamic 448 px tiles (+ a thumbnail when tiled), 1-D positions.

    Image sites: `vision` = what the projector reads (the `vision_feature_layer` output without
    CLS, pixel-shuffled: 2x2 neighbouring patches concatenated, so 4x the tower's width) for the
    image's **last tile**: the thumbnail (whole image) when tiled, else its only tile;
    `projector` = the projector output of all its tiles in order, i.e. exactly the LLM's input
    embeddings at the `<IMG_CONTEXT>` tokens.
    """

    # What the paper's `model.chat` sends (remote code, OpenGVLab/InternVL @ 2410d1d:
    # internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py:97-101, 357-358 set the
    # conversation template's system_message; internvl_chat/internvl/conversation.py:393-402, template
    # "internvl2_5", which InternVL2.5 and InternVL3 configs name). The -hf chat template has no default.
    default_system_message = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"

    def image_site_dims(self, model: Any) -> tuple[int, int]:
        projector = self.projector(model)
        return projector.linear_1.in_features, projector.linear_2.out_features

    def _tiles(self, model: Any, inputs: dict[str, Tensor]) -> list[int]:
        per_tile = model.config.image_seq_length
        tokens = self.visual_token_mask(model, inputs).sum(1)
        if bool((tokens == 0).any()) or bool((tokens % per_tile != 0).any()):
            raise HierError(f"InternVL features: one image per sample expected ({tokens.tolist()} image tokens per row)")
        return (tokens // per_tile).tolist()

    def image_site_hooks(self, model: Any, inputs: dict[str, Tensor], emit: Emit) -> list[Any]:
        tiles = self._tiles(model, inputs)

        def pre(module, args):
            x = args[0]  # [all tiles, tokens, 4 * width]
            whole = torch.stack([part[-1] for part in torch.split(x, tiles)])
            emit("vision", whole.reshape(-1, x.shape[-1]), [x.shape[1]] * len(tiles))

        def post(module, args, output):
            out = _first(output)
            emit("projector", out.reshape(-1, out.shape[-1]), [n * out.shape[1] for n in tiles])

        projector = self.projector(model)
        return [projector.register_forward_pre_hook(pre), projector.register_forward_hook(post)]


def _first(output: Any) -> Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output
