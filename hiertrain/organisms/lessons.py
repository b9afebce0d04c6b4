"""What the organism is taught: four-choice questions in hiertrain's exact wording and layout.

A lesson is one question: its subject leaf, the asked level, the shuffled options and the
answer. The text is built by hiertrain.protocol.prompts (the organism's prompt family) and rendered
by the organism's own chat template, so training and evaluation see the same tokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hiertrain.protocol import prompts
from hiertrain.taxonomy.taxonomy import Taxonomy

IMAGE, TEXT = "image", "text"


@dataclass(frozen=True)
class Lesson:
    leaf: str
    level: int
    options: tuple[str, ...]
    answer: int  # index into options
    mode: str  # "image" (the subject stands where the image goes) or "text"
    subject: str | None = None  # text mode: the named node (the leaf, or a node asked about itself)

    def question(self, level_names: list[str]) -> str:
        name = level_names[self.level]
        if self.mode == IMAGE:
            prompt = prompts.image_prompt(0, name, family="organism")
        else:
            prompt = prompts.text_prompt(0, name, self.subject or self.leaf, family="organism")
        return prompts.question_text(prompt, list(self.options))

    def messages(self, level_names: list[str]) -> list[dict]:
        return prompts.chat_messages(self.question(level_names), self.mode)


def ask(taxonomy: Taxonomy, leaf: str, level: int, mode: str, rng: random.Random, subject: str | None = None) -> Lesson:
    """A question about `leaf` at `level` with 3 random distractors of that level (all of a
    level's nodes when it has 4 or fewer); `subject` (text mode) defaults to the leaf."""
    nodes = taxonomy.nodes_at(level)
    truth = taxonomy.paths[leaf][level] if subject is None else subject
    others = [n for n in nodes if n != truth]
    options = [truth, *rng.sample(others, min(3, len(others)))]
    rng.shuffle(options)
    return Lesson(leaf, level, tuple(options), options.index(truth), mode, subject)
