"""Load a vision LLM (or a plain LLM) by hub id or local dir.

Evaluation, probing and LoRA all load models here, so a tiny checkpoint from `hiertrain tiny`
and a real hub checkpoint take the same path. The parts the study cares about (vision tower,
projector, language model) are found by the model's family (`hiertrain.vlm.family.family_of`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hiertrain.base.errors import HierError
from hiertrain.vlm.family import family_of

DTYPES = ("float32", "bfloat16", "float16", "auto")


def load_vllm(
    pretrained: str,
    dtype: str = "float32",
    attn_implementation: str | None = "sdpa",
    device_map: Any = None,
    processor_kwargs: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """(model, processor) in eval mode; for a text-only LLM the "processor" is its tokenizer.

    Image-text-to-text models load with AutoModelForImageTextToText + AutoProcessor; causal LMs
    with AutoModelForCausalLM + AutoTokenizer. The processor is returned as saved (its padding
    side untouched): callers that batch generation set `padding_side` themselves.
    `processor_kwargs` go to `AutoProcessor.from_pretrained` (e.g. Qwen2-VL `min_pixels` /
    `max_pixels`, InternVL-hf `max_patches`), so a protocol's image settings are the processor's own.
    """
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    if dtype not in DTYPES:
        raise HierError(f"{pretrained}: unknown dtype '{dtype}' (choose one of {', '.join(DTYPES)})")
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    config = _load_config(pretrained, AutoConfig)
    kwargs = {"dtype": torch_dtype, "attn_implementation": attn_implementation, "device_map": device_map}
    try:  # an image-text model without a family adapter fails here, before its weights load
        family_of(config)
    except HierError as err:
        raise HierError(f"{pretrained}: {err}") from err
    if type(config) in AutoModelForImageTextToText._model_mapping:
        model = AutoModelForImageTextToText.from_pretrained(pretrained, config=config, **kwargs)
        processor = AutoProcessor.from_pretrained(pretrained, **(processor_kwargs or {}))
    elif type(config) in AutoModelForCausalLM._model_mapping:
        if processor_kwargs:
            raise HierError(f"{pretrained}: a text-only LLM has no image processor for {sorted(processor_kwargs)}")
        model = AutoModelForCausalLM.from_pretrained(pretrained, config=config, **kwargs)
        processor = AutoTokenizer.from_pretrained(pretrained)
    else:
        raise HierError(
            f"{pretrained}: model type '{config.model_type}' is neither an image-text-to-text model nor a causal LM"
        )
    return model.eval(), processor


def _load_config(pretrained: str, auto_config):
    path = Path(pretrained).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise HierError(f"{pretrained}: not a model directory (no config.json)")
    elif pretrained.startswith((".", "/", "~")) or pretrained.count("/") > 1:
        raise HierError(f"{pretrained}: no such model directory")
    try:
        return auto_config.from_pretrained(pretrained)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HierError(f"{pretrained}: cannot load model config ({reason})") from err
