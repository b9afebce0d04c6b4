"""Answer every level of an image from one vision encoding and one prefill of the shared prefix.

The per-level prompts of one image are identical up to the end of the image (system prompt,
user turn, image tokens); only the question differs. So the prefix runs once per image (its
KV cache is copied once per level with `Cache.reorder_cache`) and the per-level suffixes run
as one right-padded batch on top of it. Right padding keeps every real token at the position
a plain forward would give it; the letter logits are read at each row's last real token.

Position ids are always passed explicitly: the model's family (`hiertrain.vlm.family`) gives
the prefix positions and a per-row delta (Qwen2-VL / Qwen2.5-VL: 3-row mRoPE from
`get_rope_index`, text after an image shifted by a per-image `rope_delta`); the suffix gets
prefix length + offset + delta. Whatever state the model keeps between calls (Qwen's cached
`rope_deltas`) is cleared by the family after each group, so nothing leaks from one image to
the next. (transformers 5 has no `cache_position` argument any more: the
query offset is the cache length, which is the prefix length here.)

`generate` equals the model's own `generate(do_sample=False, max_new_tokens=N)`, including what
the checkpoint's `generation_config.json` adds to greedy decoding (e.g. Qwen2.5-VL's
`repetition_penalty: 1.05`, its eos list): the logits processors are the ones `generate` builds
(`_prepare_generation_config` + `_get_logits_processor`), applied per row to that row's own
tokens (prefix + its suffix + its reply so far), so padding never counts as a repeated token.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from hiertrain.core.errors import HierError
from hiertrain.core.prompts import LETTERS
from hiertrain.vlm.family import family_of


@dataclass
class ImagePrompts:
    """One image (None in text mode) and the rendered chat prompt of each of its asked levels."""

    image: Any
    prompts: list[str]


def render_chat(processor: Any, messages: list[dict]) -> str:
    """The model's own chat template applied to `messages`, ready for the assistant's reply.

    A plain LLM's tokenizer template (e.g. Qwen2.5-Instruct) expects string contents, so the
    text parts are joined for it; a VLLM processor takes the typed parts as they are.
    """
    if getattr(processor, "image_processor", None) is None:
        messages = [
            {**m, "content": "".join(p["text"] for p in m["content"] if p.get("type") == "text")}
            if isinstance(m["content"], list)
            else m
            for m in messages
        ]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class SharedPrefixAnswerer:
    """Letter logits (`answer: logits`) or greedy replies (`answer: generate`) for many levels.

    Args:
        model: a loaded image-text-to-text model or causal LM (eval mode, any device).
        processor: its processor (VLLM) or tokenizer (plain LLM).
        max_new_tokens: reply length for `generate` (the paper's 5).
    """

    def __init__(self, model: Any, processor: Any, max_new_tokens: int = 5) -> None:
        self.model, self.processor, self.max_new_tokens = model, processor, max_new_tokens
        self.family = family_of(model)
        self.tokenizer = self.family.tokenizer(processor)
        added = sorted((t.content for t in self.tokenizer.added_tokens_decoder.values()), key=len, reverse=True)
        self._added = re.compile("|".join(map(re.escape, added))) if added else None
        self._letters: dict[str, list[int]] = {}
        eos = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    # ------------------------------------------------------------------ letters

    def letter_ids(self, letter: str) -> list[int]:
        """The token ids that spell `letter` as one token, without and with a leading space."""
        if letter not in self._letters:
            ids = []
            for text in (letter, " " + letter):
                encoded = self.tokenizer.encode(text, add_special_tokens=False)
                if len(encoded) == 1:
                    ids.append(encoded[0])
            if not ids:
                raise HierError(
                    f"{self.tokenizer.name_or_path}: option letter {letter!r} is not a single token "
                    "(with or without a leading space); use answer: generate"
                )
            self._letters[letter] = ids
        return self._letters[letter]

    def letter_scores(self, logits: torch.Tensor, n_options: int) -> torch.Tensor:
        """[..., V] next-token logits -> [..., n_options]: each letter's best spelling."""
        cols = [logits[..., self.letter_ids(letter)].max(-1).values for letter in LETTERS[:n_options]]
        return torch.stack(cols, -1).float()

    # ------------------------------------------------------------------ splitting

    def split_point(self, prompts: list[str]) -> int:
        """Character index ending the shared prefix: just after the last added (special) token
        that all prompts share and that leaves every prompt a non-empty suffix. Cutting at a
        special token keeps tokenization additive; `check_split` verifies it."""
        common = os.path.commonprefix(prompts)
        shortest = min(len(p) for p in prompts)
        ends = [m.end() for m in self._added.finditer(common)] if self._added else []
        ends = [e for e in ends if e < shortest]
        return ends[-1] if ends else 0

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def check_split(self, prompts: list[str], cut: int) -> list[list[int]]:
        """Suffix token ids per prompt; HierError when prefix + suffix tokens != the whole."""
        prefix = self._encode(prompts[0][:cut])
        suffixes = []
        for prompt in prompts:
            suffix = self._encode(prompt[cut:])
            if prefix + suffix != self._encode(prompt):
                raise HierError(
                    f"{self.tokenizer.name_or_path}: prompt does not tokenize the same when split after "
                    f"{prompt[max(0, cut - 20):cut]!r}; prefix sharing is not safe for this tokenizer"
                )
            suffixes.append(suffix)
        return suffixes

    # ------------------------------------------------------------------ running

    def _process(self, texts: list[str], images: list[Any] | None) -> dict[str, torch.Tensor]:
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
        if images is not None:
            kwargs["images"] = images
        inputs = dict(self.processor(**kwargs))
        return {k: v.to(self.model.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}

    def _prefix_positions(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(position_ids, per-row delta added to text positions after the prefix)."""
        return self.family.prefix_positions(self.model, inputs)

    def _text_positions(self, positions: torch.Tensor) -> torch.Tensor:
        return self.family.text_positions(positions)

    def _reset_state(self) -> None:
        self.family.reset_state(self.model)

    @torch.no_grad()
    def _run(self, items: list[ImagePrompts], generate: bool) -> list[Any]:
        """Per item: [L, V] last-token logits (generate=False) or L reply strings."""
        results: list[Any] = [None] * len(items)
        groups: dict[tuple, list[tuple[int, int, list[list[int]]]]] = defaultdict(list)
        for index, item in enumerate(items):
            if not item.prompts:
                results[index] = [] if generate else torch.empty(0, 0)
                continue
            cut = self.split_point(item.prompts)
            if cut == 0:
                raise HierError(f"{self.tokenizer.name_or_path}: prompts share no special-token prefix to cache")
            suffixes = self.check_split(item.prompts, cut)
            size = None if item.image is None else tuple(item.image.size)
            groups[(item.prompts[0][:cut], size)].append((index, cut, suffixes))
        for (prefix, _), members in groups.items():
            images = None if items[members[0][0]].image is None else [items[i].image for i, _, _ in members]
            inputs = self._process([prefix] * len(members), images)
            if not bool(inputs["attention_mask"].all()):  # unequal prefix lengths: run one by one
                for member in members:
                    self._run_group(items, [member], prefix, results, generate)
            else:
                self._run_group(items, members, prefix, results, generate, inputs)
        return results

    def _run_group(self, items, members, prefix, results, generate, inputs=None) -> None:
        if inputs is None:
            images = None if items[members[0][0]].image is None else [items[members[0][0]].image]
            inputs = self._process([prefix], images)
        try:
            positions, deltas = self._prefix_positions(inputs)
            out = self.model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
            cache, plen = out.cache, inputs["input_ids"].shape[1]
            rows = [b for b, (_, _, suffixes) in enumerate(members) for _ in suffixes]
            cache.reorder_cache(torch.tensor(rows, device=self.model.device))
            suffixes = [s for _, _, sfx in members for s in sfx]
            prefix_ids = [inputs["input_ids"][b].tolist() for b in rows] if generate else None
            per_row = self._suffix_logits(cache, plen, deltas[rows], suffixes, generate, prefix_ids)
        finally:
            self._reset_state()
        start = 0
        for index, _, sfx in members:
            results[index] = per_row[start : start + len(sfx)]
            start += len(sfx)

    def _suffix_logits(
        self, cache, plen: int, deltas: torch.Tensor, suffixes: list[list[int]], generate: bool,
        prefix_ids: list[list[int]] | None = None,
    ):  # fmt: skip
        device = self.model.device
        lengths = torch.tensor([len(s) for s in suffixes], device=device)
        width = int(lengths.max())
        ids = torch.full((len(suffixes), width), self.pad_id, dtype=torch.long, device=device)
        for r, s in enumerate(suffixes):
            ids[r, : len(s)] = torch.tensor(s, device=device)
        real = torch.arange(width, device=device)[None, :] < lengths[:, None]
        mask = torch.cat([torch.ones(len(suffixes), plen, dtype=torch.long, device=device), real.long()], 1)
        positions = plen + torch.arange(width, device=device)[None, :] + deltas
        keep = torch.unique(lengths - 1)  # logits only where some row ends
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=self._text_positions(positions),
            cache=cache, use_cache=generate, logits_to_keep=keep,
        )  # fmt: skip
        where = torch.searchsorted(keep, lengths - 1)
        last = out.logits[torch.arange(len(suffixes), device=device), where]
        if not generate:
            return last
        return self._greedy(cache, mask, lengths + plen + deltas.view(-1), last, [p + s for p, s in zip(prefix_ids, suffixes)])

    def generation_processors(self, prompt_ids: torch.Tensor) -> Any:
        """The logits processors `model.generate(ids, do_sample=False, max_new_tokens=N)` would
        use for this one prompt (built by transformers from the model's generation config)."""
        model = self.model
        config, _ = model._prepare_generation_config(None, do_sample=False, max_new_tokens=self.max_new_tokens)
        model._prepare_special_tokens(config, True, device=prompt_ids.device)
        mask = torch.ones_like(prompt_ids)
        return model._get_logits_processor(
            generation_config=config, input_ids_seq_length=prompt_ids.shape[-1], encoder_input_ids=prompt_ids,
            device=prompt_ids.device, model_kwargs={"attention_mask": mask},
        )  # fmt: skip

    def _greedy(
        self, cache, mask: torch.Tensor, next_pos: torch.Tensor, logits: torch.Tensor, prompts: list[list[int]]
    ) -> list[str]:
        """Greedy decoding on the padded cache: pad slots stay masked, positions continue per row;
        each row's logits go through `generate`'s processors with that row's own token history."""
        device = mask.device
        history = [torch.tensor(p, dtype=torch.long, device=device).view(1, -1) for p in prompts]
        processors = [self.generation_processors(h) for h in history]

        def choose(step_logits: torch.Tensor) -> torch.Tensor:
            picked = []
            for r, row in enumerate(step_logits):
                scores = processors[r](history[r], row.float().view(1, -1)) if processors[r] else row.view(1, -1)
                picked.append(scores.argmax(-1))
            chosen = torch.cat(picked)
            for r in range(len(history)):
                history[r] = torch.cat([history[r], chosen[r].view(1, 1)], 1)
            return chosen

        tokens = [choose(logits)]
        done = torch.tensor([int(t) in self.eos_ids for t in tokens[0]], device=mask.device)
        for step in range(1, self.max_new_tokens):
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones(len(mask), 1, dtype=mask.dtype, device=mask.device)], 1)
            positions = (next_pos + step - 1).view(-1, 1)
            out = self.model(
                input_ids=tokens[-1].view(-1, 1), attention_mask=mask,
                position_ids=self._text_positions(positions), cache=cache, use_cache=True,
            )  # fmt: skip
            nxt = choose(out.logits[:, -1])
            tokens.append(nxt)
            done = done | torch.tensor([int(t) in self.eos_ids for t in nxt], device=mask.device)
        replies = []
        for row in torch.stack(tokens, 1).tolist():
            cut = next((i for i, t in enumerate(row) if t in self.eos_ids), len(row))
            replies.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True))
        return replies

    # ------------------------------------------------------------------ public

    def logits(self, items: list[ImagePrompts]) -> list[torch.Tensor]:
        """Per item, [levels, vocab] next-token logits after each level's prompt."""
        return self._run(items, generate=False)

    def generate(self, items: list[ImagePrompts]) -> list[list[str]]:
        """Per item, each level's greedy reply (up to `max_new_tokens`, stopping at EOS)."""
        return self._run(items, generate=True)

    @torch.no_grad()
    def full_forward_logits(self, image: Any, prompt: str) -> torch.Tensor:
        """Reference without sharing: one plain forward of the whole prompt, [vocab] logits."""
        self._reset_state()
        try:
            inputs = self._process([prompt], None if image is None else [image])
            return self.model(**inputs, logits_to_keep=1).logits[0, -1]
        finally:
            self._reset_state()

    @torch.no_grad()
    def full_generate(self, image: Any, prompt: str) -> str:
        """Reference without sharing: HF `generate` on the whole prompt, greedy."""
        self._reset_state()
        try:
            inputs = self._process([prompt], None if image is None else [image])
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        finally:
            self._reset_state()
