"""The private transformers calls hiertrain depends on, in one place, checked before use.

`SharedPrefixAnswerer.generate` must decode exactly as `model.generate(do_sample=False)` does,
including the logits processors the checkpoint's generation config adds (Qwen2.5-VL's
repetition penalty). transformers builds those only in private `GenerationMixin` methods, so
they are called here and nowhere else; `check_generation_internals` names the installed version
and the missing piece in one line when an upgrade changes them (pyproject pins the tested range:
`TESTED_TRANSFORMERS`).
"""

from __future__ import annotations

import inspect
from typing import Any

from hiertrain.base.errors import HierError

TESTED_TRANSFORMERS = ">=5.0,<5.26"  # = pyproject.toml's pin (tests/vlm/test_hf_private.py)

# method -> the keyword parameters hiertrain passes it
GENERATION_INTERNALS: dict[str, tuple[str, ...]] = {
    "_prepare_generation_config": ("generation_config",),
    "_prepare_special_tokens": ("generation_config", "kwargs_has_attention_mask", "device"),
    "_get_logits_processor": ("generation_config", "input_ids_seq_length", "encoder_input_ids", "device", "model_kwargs"),
}


def check_generation_internals(model: Any) -> None:
    """HierError (one line, naming the transformers version) unless `model` has every private
    generation method hiertrain calls, with the parameters it passes."""
    import transformers

    for name, params in GENERATION_INTERNALS.items():
        method = getattr(model, name, None)
        if method is None:
            raise HierError(
                f"transformers {transformers.__version__}: {type(model).__name__} has no {name} (hiertrain's exact greedy "
                f"decoding needs it; tested with transformers{TESTED_TRANSFORMERS})"
            )
        have = inspect.signature(method).parameters
        missing = [p for p in params if p not in have]
        if missing:
            raise HierError(
                f"transformers {transformers.__version__}: {name} takes no {', '.join(missing)} (tested with "
                f"transformers{TESTED_TRANSFORMERS})"
            )


def greedy_logits_processors(model: Any, prompt_ids: Any, max_new_tokens: int) -> Any:
    """The logits processors `model.generate(prompt_ids, do_sample=False, max_new_tokens=N)` would
    use for this one prompt (built by transformers from the model's generation config)."""
    import torch

    check_generation_internals(model)
    config, _ = model._prepare_generation_config(None, do_sample=False, max_new_tokens=max_new_tokens)
    model._prepare_special_tokens(config, True, device=prompt_ids.device)
    return model._get_logits_processor(
        generation_config=config, input_ids_seq_length=prompt_ids.shape[-1], encoder_input_ids=prompt_ids,
        device=prompt_ids.device, model_kwargs={"attention_mask": torch.ones_like(prompt_ids)},
    )  # fmt: skip
