"""One run-wide prefix: the taxonomy in context is prefilled once per run, not once per image.

In the taxonomy condition (hiertrain.protocol.conditions) every prompt of the run opens with the same
system turn holding the whole taxonomy (CUB-200: ~9k tokens) before the image. `SharedPrefixAnswerer`
already shares each image's prefix across its levels; `GlobalPrefixAnswerer` also shares the text
before the image across all images: that text's KV cache is computed once (the first step), then
copied for every step, expanded to the step's images (`Cache.reorder_cache`) and extended by each
image's own prefix (vision tokens and the rest of its user turn); the per-level suffixes follow as
in `SharedPrefixAnswerer`.

The run-wide prefix ends just after an added (special) token, holds no image/video token, leaves
every image prefix non-empty, and tokenizes additively (its tokens + the rest's = the whole), so
every token sits at the position and sees the keys a plain forward of its own prompt gives it;
a step whose prefixes do not open with it runs the ordinary way. The extension is one forward of
the image prefixes' remaining tokens with the global slots in the attention mask and the
positions of the full prefix (Qwen2.5-VL: `get_rope_index` over the whole prefix, sliced).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from hiertrain.base.errors import HierError
from hiertrain.vlm.prefix_cache import SharedPrefixAnswerer


class GlobalPrefixAnswerer(SharedPrefixAnswerer):
    """`SharedPrefixAnswerer` whose steps start from one cached run-wide prefix (see module doc).

    `global_tokens`: the run-wide prefix's length in tokens (0 = none usable); `global_prefills`:
    how many times it was computed (1 per answerer); `global_steps`: steps that started from it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._global_text: str | None = None
        self._global_ids: list[int] = []
        self._global_cache: Any = None
        self._global_checked = False
        self.global_tokens = 0
        self.global_prefills = 0
        self.global_steps = 0
        config = getattr(self.model, "config", None)
        keys = ("image_token_id", "video_token_id", "image_token_index", "video_token_index")
        self._media_ids = {getattr(config, k) for k in keys if isinstance(getattr(config, k, None), int)}

    def global_cut(self, prefix: str) -> int:
        """End of the longest opening of `prefix` usable as the run-wide prefix (0: none)."""
        ends = [m.end() for m in self._added.finditer(prefix)] if self._added else []
        whole = self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        for end in reversed([e for e in ends if e < len(prefix)]):
            head = self.tokenizer(prefix[:end], add_special_tokens=False)["input_ids"]
            if self._media_ids & set(head):
                continue
            tail = self.tokenizer(prefix[end:], add_special_tokens=False)["input_ids"]
            if head + tail == whole:
                return end
        return 0

    @torch.inference_mode()
    def _prefill_global(self, prefix: str) -> None:
        """Find and prefill the run-wide prefix from the first step's first prefix (once)."""
        self._global_checked = True
        cut = self.global_cut(prefix)
        if cut == 0:
            return
        text = prefix[:cut]
        inputs = self._process([text], None)
        try:
            positions, _ = self._prefix_positions(inputs)
            out = self.model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
        finally:
            self._reset_state()
        self._global_text, self._global_ids = text, inputs["input_ids"][0].tolist()
        self._global_cache, self.global_tokens = out.cache, len(self._global_ids)
        self.global_prefills += 1

    def _run_step(self, members: list[Any], generate: bool) -> list[Any]:
        if not self._global_checked:
            self._prefill_global(members[0].prefix)
        text = self._global_text
        if text is None or not all(m.prefix.startswith(text) and len(m.prefix) > len(text) for m in members):
            return super()._run_step(members, generate)
        return self._run_step_from_global(members, generate)

    def _run_step_from_global(self, members: list[Any], generate: bool) -> list[Any]:
        """`SharedPrefixAnswerer._run_step` with the prefill started from the run-wide cache."""
        inputs, real = self._step_inputs(members)
        g = self.global_tokens
        ids = inputs["input_ids"]
        if ids.shape[1] <= g or ids[:, :g].tolist() != [self._global_ids] * len(members):
            raise HierError(f"{self.tokenizer.name_or_path}: an image prefix does not open with the run-wide prefix's tokens")
        device = self.model.device
        self.global_steps += 1
        try:
            positions, deltas = self._prefix_positions(inputs)
            cache = copy.deepcopy(self._global_cache)
            cache.reorder_cache(torch.zeros(len(members), dtype=torch.long, device=device))  # one copy per image
            per_token = {*self.family.per_token_keys, "input_ids"}
            rest = {k: (v[:, g:] if k in per_token else v) for k, v in inputs.items()}
            out = self.model(**rest, position_ids=positions[..., g:], cache=cache, use_cache=True, logits_to_keep=1)
            return self._answer_on_cache(out.cache, inputs, real, deltas, members, generate)
        finally:
            self._reset_state()
