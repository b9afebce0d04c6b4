"""Answer every level of many images from one vision pass and one prefill per step.

The per-level prompts of one image are identical up to the end of the image (system prompt,
user turn, image tokens); only the question differs. So the prefix runs once per image and the
per-level suffixes run as one batch on top of its KV cache. Several images go
through one step together: their prefixes (of different lengths when the image sizes differ)
are right-padded into one vision pass + one prefill, the cache is expanded to one row per
suffix with transformers' `Cache.reorder_cache`, and all suffixes of all images run as one
batch (each suffix padded at the front of its block, so all rows end in the last column). Pad
slots stay masked, so every real token sees exactly what a plain forward of its own prompt
sees; the letter logits are read at each row's last token. A step is bounded by
`max_batch_tokens` KV slots (rows x padded length): items are sorted by prefix length and
packed, so neighbours pad little (`pad_prefixes=False` groups equal lengths instead). Within a
step, suffixes of very different lengths (a one-line kingdom question next to a species
question with long Latin names) run as separate forwards on copies of the prefilled cache
(`suffix_groups`), so short rows are not padded to the longest. The suffix forward gets its
attention mask as the 4D additive mask transformers would build from the 2D one (passed
through as is), made once per step instead of converted from boolean in every layer.
Everything runs under `torch.inference_mode`, as Lightning's test loop runs it.

Position ids are always passed explicitly: the model's family (`hiertrain.vlm.family`) gives
the prefix positions and a per-row delta (Qwen2-VL / Qwen2.5-VL: 3-row mRoPE from
`get_rope_index` with the padding mask, text after an image shifted by a per-image
`rope_delta`); a suffix gets its own row's real prefix length + offset + delta. Whatever state
the model keeps between calls (Qwen's cached `rope_deltas`) is cleared by the family after each
step, so nothing leaks from one step to the next. (transformers 5 has no `cache_position`
argument any more: the query offset is the cache length, the padded prefix length here, which
only the causal mask reads; the positions are explicit.)

`generate` equals the model's own `generate(do_sample=False, max_new_tokens=N)`, including what
the checkpoint's `generation_config.json` adds to greedy decoding (e.g. Qwen2.5-VL's
`repetition_penalty: 1.05`, its eos list): the logits processors are the ones `generate` builds
(`hiertrain.vlm.hf_private`: transformers' private builders), applied per row to that row's own
tokens (prefix + its suffix + its reply so far), so padding never counts as a repeated token.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from typing import Any

import torch

from hiertrain.base.errors import HierError
from hiertrain.protocol.prompts import LETTERS
from hiertrain.vlm.family import family_of


@dataclass
class ImagePrompts:
    """One image (None in text mode) and the rendered chat prompt of each of its asked levels."""

    image: Any
    prompts: list[str]


@dataclass
class _Prepared:
    """One item ready to batch: its prefix text and image, the prefix's token count (estimated
    from the image size before processing; only the packing reads it), its suffix ids."""

    prefix: str
    image: Any
    length: int
    suffixes: list[list[int]]

    @property
    def kind(self) -> bool:
        """Only items of one kind (all with an image, or all without) share a step."""
        return self.image is not None


CPU_BATCH_TOKENS = 32768
GPU_BATCH_TOKENS_PER_GIB = 2048
SUFFIX_FORWARD_TOKENS = 512  # the fixed cost of one more suffix forward, in padded suffix tokens


def default_max_batch_tokens(device: Any) -> int:
    """A step budget that fits the device: CPU 32768 KV slots (8 images of 448 px with 7
    levels in one step; 16384 split them 5 + 3 and was slower, measured with
    bench/eval_speed.py --max-batch-tokens); CUDA 2048 per GiB of the device's memory (80 GB: ~160k
    slots, ~9 GiB of bf16 KV cache at Qwen2.5-VL-7B's sizes, room for the prefill too)."""
    device = torch.device(device)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        return int(total * GPU_BATCH_TOKENS_PER_GIB)
    return CPU_BATCH_TOKENS


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
        max_batch_tokens: KV-cache slots per forward step (suffix rows x padded length); None =
            `default_max_batch_tokens(model.device)`. 1 = one image per step (the per-image path).
        pad_prefixes: let a step mix prefix lengths (right-padded); False = group equal lengths.
    """

    def __init__(
        self, model: Any, processor: Any, max_new_tokens: int = 5,
        max_batch_tokens: int | None = None, pad_prefixes: bool = True,
    ) -> None:  # fmt: skip
        self.model, self.processor, self.max_new_tokens = model, processor, max_new_tokens
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise HierError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        self._max_batch_tokens, self.pad_prefixes = max_batch_tokens, pad_prefixes
        self.family = family_of(model)
        self.tokenizer = self.family.tokenizer(processor)
        added = sorted((t.content for t in self.tokenizer.added_tokens_decoder.values()), key=len, reverse=True)
        self._added = re.compile("|".join(map(re.escape, added))) if added else None
        self._letters: dict[str, list[int]] = {}
        self._checked: set[tuple[str, str]] = set()  # (prefix, suffix opening) pairs verified additive
        eos = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    @property
    def max_batch_tokens(self) -> int:
        """The step budget; the device default is read at run time (Lightning moves the model
        to its device after the answerer is built)."""
        if self._max_batch_tokens is not None:
            return self._max_batch_tokens
        return default_max_batch_tokens(getattr(self.model, "device", "cpu"))

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
        special token keeps tokenization additive; `check_splits` verifies it."""
        common = os.path.commonprefix(prompts)
        shortest = min(len(p) for p in prompts)
        ends = [m.end() for m in self._added.finditer(common)] if self._added else []
        ends = [e for e in ends if e < shortest]
        return ends[-1] if ends else 0

    def check_splits(self, splits: list[tuple[list[str], int]]) -> tuple[list[int], list[list[list[int]]]]:
        """Per (prompts, cut): the prefix's token count and each prompt's suffix ids, from one
        tokenizer call for all of them; HierError when prefix + suffix tokens != the whole.

        A fast tokenizer cuts the text at added tokens first and tokenizes the pieces apart, so
        whether a cut right after an added token changes the tokens depends only on the prefix
        and on how the suffix opens (leading whitespace + first character, which an `rstrip` /
        `single_word` token reacts to): each such (prefix, opening) is compared in full once,
        later suffixes with a seen opening are only encoded.
        """
        texts: list[str] = []
        fresh: dict[tuple[str, str], str] = {}  # (prefix, opening) -> a whole prompt to compare once
        for prompts, cut in splits:
            prefix = prompts[0][:cut]
            texts.append(prefix)
            for prompt in prompts:
                texts.append(prompt[cut:])
                key = (prefix, _opening(prompt[cut:]))
                if key not in self._checked:
                    fresh.setdefault(key, prompt)
        ids = iter(self.tokenizer(texts + list(fresh.values()), add_special_tokens=False)["input_ids"])
        lengths, suffixes, parts = [], [], {}
        for prompts, cut in splits:
            prefix = next(ids)
            tails = [next(ids) for _ in prompts]
            lengths.append(len(prefix))
            suffixes.append(tails)
            for prompt, tail in zip(prompts, tails):
                parts.setdefault((prompts[0][:cut], _opening(prompt[cut:])), prefix + tail)
        for (key, prompt), whole in zip(fresh.items(), ids):
            if parts[key] != whole:
                cut = len(key[0])
                raise HierError(
                    f"{self.tokenizer.name_or_path}: prompt does not tokenize the same when split after "
                    f"{prompt[max(0, cut - 20):cut]!r}; prefix sharing is not safe for this tokenizer"
                )
            self._checked.add(key)
        return lengths, suffixes

    # ------------------------------------------------------------------ running

    def _process(self, texts: list[str], images: list[Any] | None) -> dict[str, torch.Tensor]:
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True, "padding_side": "right"}
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

    def _prepare(self, items: list[ImagePrompts]) -> list[_Prepared]:
        """Split each item's prompts; estimate each prefix's token count from its text and image
        size (the processor's own `_get_num_multimodal_tokens`, one call for all images)."""
        cuts = [self.split_point(item.prompts) for item in items]
        if 0 in cuts:
            raise HierError(f"{self.tokenizer.name_or_path}: prompts share no special-token prefix to cache")
        lengths, suffixes = self.check_splits([(item.prompts, cut) for item, cut in zip(items, cuts)])
        visual = self._visual_tokens([item.image for item in items])
        return [
            _Prepared(item.prompts[0][:cut], item.image, length + extra, tails)
            for item, cut, length, tails, extra in zip(items, cuts, lengths, suffixes, visual)
        ]

    def _visual_tokens(self, images: list[Any]) -> list[int]:
        """Per image, the tokens its placeholder expands to, minus the placeholder (0 without an
        image, or when the processor cannot tell: then packing just sees shorter prefixes)."""
        sizes = [(img.height, img.width) for img in images if img is not None]
        count = getattr(self.processor, "_get_num_multimodal_tokens", None)
        if not sizes or count is None:
            return [0] * len(images)
        tokens = iter(count(image_sizes=sizes)["num_image_tokens"])
        return [0 if img is None else int(next(tokens)) - 1 for img in images]

    def chunks(self, prepared: list[_Prepared]) -> list[list[int]]:
        """Indices of `prepared` per forward step, under `max_batch_tokens` KV slots.

        Items are taken in order of prefix length (so neighbours pad little); a step's cost is
        its suffix rows x (longest prefix + longest suffix), the cache it holds at the suffix
        step. With `pad_prefixes=False` a step never mixes prefix lengths (group, no padding);
        a step never mixes items with and without an image.
        An item alone over the budget still runs, alone.
        """
        order = sorted(range(len(prepared)), key=lambda i: (prepared[i].kind, prepared[i].length))
        steps: list[list[int]] = []
        rows = plen = slen = 0
        kind = False
        budget = self.max_batch_tokens
        for i in order:
            item = prepared[i]
            n, longest = len(item.suffixes), max(len(s) for s in item.suffixes)
            grown = (rows + n) * (max(plen, item.length) + max(slen, longest))
            mixed = item.kind != kind or (not self.pad_prefixes and item.length != plen)
            if steps and grown <= budget and not mixed:
                steps[-1].append(i)
                rows, plen, slen = rows + n, max(plen, item.length), max(slen, longest)
            else:
                steps.append([i])
                rows, plen, slen, kind = n, item.length, longest, item.kind
        return steps

    @torch.inference_mode()
    def _run(self, items: list[ImagePrompts], generate: bool) -> list[Any]:
        """Per item: [L, V] last-token logits (generate=False) or L reply strings.

        Under `inference_mode` (what Lightning's test loop already sets; also when called
        directly); the references below keep `generate`'s own `no_grad`, as the paper's scripts
        call it."""
        results: list[Any] = [None] * len(items)
        asked = [i for i, item in enumerate(items) if item.prompts]
        for index in set(range(len(items))) - set(asked):
            results[index] = [] if generate else torch.empty(0, 0)
        prepared = self._prepare([items[i] for i in asked])
        for step in self.chunks(prepared):
            members = [prepared[j] for j in step]
            per_item = self._run_step(members, generate)
            for j, out in zip(step, per_item):
                results[asked[j]] = out
        return results

    def _run_step(self, members: list[_Prepared], generate: bool) -> list[Any]:
        """One vision pass + one prefill of all members' (right-padded) prefixes, then all their
        suffixes as one batch on the cache expanded to one row per suffix."""
        inputs, real = self._step_inputs(members)
        try:
            positions, deltas = self._prefix_positions(inputs)
            out = self.model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
            return self._answer_on_cache(out.cache, inputs, real, deltas, members, generate)
        finally:
            self._reset_state()

    def _step_inputs(self, members: list[_Prepared]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The processor's batch of the members' prefixes (right-padded) and each one's real length."""
        images = [m.image for m in members] if members[0].image is not None else None
        inputs = self._process([m.prefix for m in members], images)
        if not bool(inputs["attention_mask"][:, 0].all()):
            raise HierError(f"{type(self.processor).__name__}: prefixes came back left-padded; right padding is required")
        return inputs, inputs["attention_mask"].sum(1)

    def _answer_on_cache(
        self, cache, inputs: dict[str, torch.Tensor], real: torch.Tensor, deltas: torch.Tensor,
        members: list[_Prepared], generate: bool,
    ) -> list[Any]:
        """Answer every suffix of every member on the prefilled cache, expanded to one row per
        suffix; suffixes of very different lengths go in separate forwards (`suffix_groups`),
        each on its own copy of the prefilled cache, so short ones are not padded to the longest."""
        device = self.model.device
        owner = [b for b, m in enumerate(members) for _ in m.suffixes]
        suffixes = [s for m in members for s in m.suffixes]
        groups = self.suffix_groups([len(s) for s in suffixes])
        answers: list[Any] = [None] * len(suffixes)
        for g, group in enumerate(groups):
            group_cache = cache if g == len(groups) - 1 else copy.deepcopy(cache)
            rows = torch.tensor([owner[r] for r in group], device=device)
            group_cache.reorder_cache(rows)  # transformers' own batch expansion: row r = copy of its prefix
            prefix_ids = [inputs["input_ids"][b, : real[b]].tolist() for b in rows.tolist()] if generate else None
            starts = real[rows].view(-1, 1) + deltas[rows]
            out = self._suffix_logits(
                group_cache, inputs["attention_mask"][rows], starts, [suffixes[r] for r in group], generate, prefix_ids
            )
            for r, answer in zip(group, out):
                answers[r] = answer
        out_items, start = [], 0
        for m in members:
            mine = answers[start : start + len(m.suffixes)]
            out_items.append(mine if generate else torch.stack(mine))
            start += len(m.suffixes)
        return out_items

    def suffix_groups(self, lengths: list[int]) -> list[list[int]]:
        """Suffix indices per forward, in order of length: the split of the sorted lengths with
        the fewest padded suffix tokens (rows x the group's longest suffix), each extra forward
        counted as `SUFFIX_FORWARD_TOKENS` (its fixed cost)."""
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        widths = sorted(set(lengths))
        rows_upto = [sum(1 for n in lengths if n <= w) for w in widths]
        best = [0.0] + [float("inf")] * len(widths)  # best[j]: cost of the rows up to widths[j - 1]
        cut = [0] * (len(widths) + 1)
        for j in range(1, len(widths) + 1):
            for i in range(j):
                rows = rows_upto[j - 1] - (rows_upto[i - 1] if i else 0)
                cost = best[i] + rows * widths[j - 1] + (SUFFIX_FORWARD_TOKENS if i else 0)
                if cost < best[j]:
                    best[j], cut[j] = cost, i
        bounds, j = [], len(widths)
        while j:
            bounds.append(rows_upto[j - 1])
            j = cut[j]
        bounds = [0, *reversed(bounds)]
        return [order[a:b] for a, b in zip(bounds, bounds[1:])]

    def _suffix_logits(
        self, cache, prefix_mask: torch.Tensor, starts: torch.Tensor, suffixes: list[list[int]], generate: bool,
        prefix_ids: list[list[int]] | None = None,
    ):  # fmt: skip
        """`prefix_mask` [R, P] marks each row's real prefix slots in the cache; `starts` [R, 1]
        is the position of each row's first suffix token (real prefix length + rope delta);
        `prefix_ids` (generate) each row's real prefix tokens, for the generation processors.

        The suffixes are padded on the left of their block, so every row ends at the last
        column and the LM head runs once per row (`logits_to_keep=1`); the pad slots between a
        row's prefix and its suffix are masked and the positions are explicit, so each real
        token still sees exactly its own prompt."""
        device = self.model.device
        lengths = torch.tensor([len(s) for s in suffixes], device=device)
        width = int(lengths.max())
        ids = torch.tensor([[self.pad_id] * (width - len(s)) + s for s in suffixes], dtype=torch.long, device=device)
        offset = torch.arange(width, device=device)[None, :] - (width - lengths)[:, None]  # <0 on pads
        mask = torch.cat([prefix_mask.long(), (offset >= 0).long()], 1)
        positions = starts + offset.clamp(min=0)
        out = self.model(
            input_ids=ids, attention_mask=self._additive_mask(mask, width), position_ids=self._text_positions(positions),
            cache=cache, use_cache=generate, logits_to_keep=1,
        )  # fmt: skip
        last = out.logits[:, -1]
        if not generate:
            return last
        return self._greedy(cache, mask, lengths + starts.view(-1), last, [p + s for p, s in zip(prefix_ids, suffixes)])

    def _additive_mask(self, mask: torch.Tensor, width: int) -> torch.Tensor:
        """[R, P+W] real-slot mask -> the [R, 1, W, P+W] additive mask of the last W queries:
        causal and real keys only, the pattern transformers builds from the 2D mask (4D masks are
        passed through as they are). Built once per step in the model's dtype; given the 2D mask,
        SDPA would convert its boolean mask to this in every layer."""
        keys = mask.shape[1]
        causal = torch.arange(keys, device=mask.device)[None, :] <= torch.arange(keys - width, keys, device=mask.device)[:, None]
        allowed = mask.bool()[:, None, None, :] & causal[None, None]
        zero, blocked = (torch.tensor(v, dtype=self.model.dtype, device=mask.device) for v in (0.0, float("-inf")))
        return torch.where(allowed, zero, blocked)

    def generation_processors(self, prompt_ids: torch.Tensor) -> Any:
        """The logits processors `model.generate(ids, do_sample=False, max_new_tokens=N)` would
        use for this one prompt (`hiertrain.vlm.hf_private`: the one place of private calls)."""
        from hiertrain.vlm.hf_private import greedy_logits_processors

        return greedy_logits_processors(self.model, prompt_ids, self.max_new_tokens)

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


def _opening(text: str) -> str:
    """Leading whitespace and the first other character: all a cut before `text` depends on."""
    body = text.lstrip()
    return text[: len(text) - len(body) + 1]
