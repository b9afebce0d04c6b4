"""Whether a model's processor can take an image at all, asked before the batch is built.

Some processors refuse whole images, not just resize them: Qwen2-VL / Qwen2.5-VL's `smart_resize`
raises `ValueError: absolute aspect ratio must be smaller than 200` (a 6000x20 strip). In a batch
that error kills the step, unnamed, on every rerun. Asking the processor's own token count for
that image size alone (`_get_num_multimodal_tokens`, the same size rules, no pixels touched)
finds such images first, so callers skip and name them like any unreadable image.
"""

from __future__ import annotations

from typing import Any


def processor_refusal(processor: Any, size: tuple[int, int] | None) -> str | None:
    """Why `processor` refuses an image of `size` = (width, height) ("ValueError: ..."), or None:
    accepted, no image, or a processor that cannot tell (then nothing is checked)."""
    count = getattr(processor, "_get_num_multimodal_tokens", None)
    if size is None or count is None:
        return None
    width, height = size
    try:
        count(image_sizes=[(height, width)])
    except ValueError as err:
        return f"{type(err).__name__}: {' '.join(str(err).split())}"
    return None
