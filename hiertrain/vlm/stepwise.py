"""Stepwise inference: an image's levels as one chat, each answered after the model's own answers.

Turn k's prompt is the chat of turns < k (each question, then the model's reply as the
assistant turn) plus question k, so it grows by the reply and the next question only. The image
and every earlier turn are encoded once: turn 1 is prefilled like any prefix
(`SharedPrefixAnswerer`: one vision pass + one prefill for all images of a step, right-padded),
and each later turn appends just its new tokens on the same KV cache, the new blocks of all
rows left-padded to one width (pad slots masked, positions explicit, as the prefix cache's
suffixes). `answer: generate` decodes each turn greedily (`SharedPrefixAnswerer._greedy`: the
model's own generation processors) and crops the cache back to the prompt before appending
the reply as the chat template renders it, so the cache always holds exactly the tokens of the
conversation's text: every turn equals a plain forward (and HF `generate`) of that whole
turn's prompt (tests/vlm/test_stepwise.py). Turn texts must extend each other (the chat
template renders earlier turns unchanged) and tokenize additively at each cut (checked every
turn; HierError otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from hiertrain.base.errors import HierError
from hiertrain.protocol.prompts import LETTERS
from hiertrain.vlm.prefix_cache import ImagePrompts, SharedPrefixAnswerer


@dataclass
class Conversation:
    """One image's levels as chat turns.

    `render(replies)` is the full chat prompt of turn `len(replies)` after those replies to the
    earlier turns; `options[k]` the number of lettered options of turn k (letter logits pick
    among them)."""

    image: Any
    render: Callable[[list[str]], str]
    options: list[int]


@dataclass
class Turn:
    """A turn's answer: the reply (the picked letter under letter logits) and the next-token logits."""

    reply: str
    logits: torch.Tensor


class StepwiseAnswerer:
    """Answer conversations turn by turn on a growing KV cache (see the module docstring)."""

    def __init__(self, answerer: SharedPrefixAnswerer) -> None:
        self.answerer = answerer

    def run(self, conversations: list[Conversation], generate: bool) -> list[list[Turn]]:
        """Per conversation, one `Turn` per level; images in steps as the prefix cache packs them."""
        a = self.answerer
        results: list[list[Turn]] = [[] for _ in conversations]
        live = [i for i, c in enumerate(conversations) if c.options]
        firsts = [conversations[i].render([]) for i in live]
        prepared = a._prepare([ImagePrompts(conversations[i].image, [text]) for i, text in zip(live, firsts)])
        with torch.inference_mode():
            for step in a.chunks(prepared):
                members = [prepared[j] for j in step]
                convs = [conversations[live[j]] for j in step]
                turns = self._run_step(members, convs, [firsts[j] for j in step], generate)
                for j, out in zip(step, turns):
                    results[live[j]] = out
        return results

    def _run_step(self, members, convs: list[Conversation], firsts: list[str], generate: bool) -> list[list[Turn]]:
        a = self.answerer
        inputs, real = a._step_inputs(members)
        try:
            positions, deltas = a._prefix_positions(inputs)
            out = a.model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
            cache, mask = out.cache, inputs["attention_mask"]
            next_pos = real.view(-1, 1) + deltas
            history = [inputs["input_ids"][r, : real[r]].tolist() for r in range(len(members))]
            blocks = [list(m.suffixes[0]) for m in members]
            texts, ids = list(firsts), [None] * len(members)
            turns: list[list[Turn]] = [[] for _ in members]
            for k in range(max(len(c.options) for c in convs)):
                logits, mask, next_pos = self._extend(cache, mask, next_pos, blocks)
                for r, block in enumerate(blocks):
                    history[r] += block
                alive = [r for r, c in enumerate(convs) if k < len(c.options)]
                if generate:
                    kept = mask.shape[1]
                    replies = a._greedy(cache, mask, next_pos.view(-1), logits, [list(h) for h in history])
                    grown = cache.get_seq_length() - kept
                    if grown:  # the reply goes back in as the template renders it (next block)
                        cache.crop(-grown)
                for r in alive:
                    if generate:
                        reply = replies[r]
                    else:
                        reply = LETTERS[int(a.letter_scores(logits[r], convs[r].options[k]).argmax())]
                    turns[r].append(Turn(reply, logits[r].float().cpu()))
                blocks = [[] for _ in members]
                for r in alive:
                    if k + 1 < len(convs[r].options):
                        blocks[r], texts[r], ids[r] = self._next_block(convs[r], turns[r], texts[r], ids[r])
            return turns
        finally:
            a._reset_state()

    def _next_block(self, conv: Conversation, turns: list[Turn], before: str, before_ids: list[int] | None):
        """The token ids that take turn k's prompt `before` to turn k+1's (the reply, the end of
        the assistant turn, the next question), checked to tokenize additively."""
        tokenizer = self.answerer.tokenizer
        text = conv.render([t.reply for t in turns])
        if not text.startswith(before):
            raise HierError(f"{tokenizer.name_or_path}: the chat template does not render earlier turns unchanged; stepwise inference cannot grow the cache")
        if before_ids is None:
            before_ids = tokenizer(before, add_special_tokens=False)["input_ids"]
        block, whole = tokenizer([text[len(before) :], text], add_special_tokens=False)["input_ids"]
        if before_ids + block != whole:
            raise HierError(
                f"{tokenizer.name_or_path}: turn {len(turns) + 1} does not tokenize the same when split after "
                f"{before[-20:]!r}; stepwise inference is not exact for this tokenizer"
            )
        return block, text, whole

    def _extend(self, cache, mask: torch.Tensor, next_pos: torch.Tensor, blocks: list[list[int]]):
        """Append each row's block (left-padded to one width) on the cache: (last-token logits
        [R, V], the grown real-slot mask, each row's next position)."""
        a = self.answerer
        device = a.model.device
        lengths = torch.tensor([len(b) for b in blocks], device=device)
        width = max(1, int(lengths.max()))
        ids = torch.tensor([[a.pad_id] * (width - len(b)) + b for b in blocks], dtype=torch.long, device=device)
        offset = torch.arange(width, device=device)[None, :] - (width - lengths)[:, None]
        grown = torch.cat([mask.long(), (offset >= 0).long()], 1)
        positions = next_pos + offset.clamp(min=0)
        out = a.model(
            input_ids=ids, attention_mask=a._additive_mask(grown, width), position_ids=a._text_positions(positions),
            cache=cache, use_cache=True, logits_to_keep=1,
        )  # fmt: skip
        return out.logits[:, -1], grown, next_pos + lengths.view(-1, 1)
