"""The exact text of every prompt, shared by evaluation and LoRA tuning.

Training on one wording and evaluating on another would measure the wording, not the
model, so every string a model sees is built here and nowhere else. The wordings are the
paper's (arXiv 2505.24840, its evaluation scripts), one set per dataset family (`IMAGE_WORDINGS`,
`TEXT_WORDINGS`: cub, inat, imagenet_animal, imagenet_artifact, food), chosen by the data config's
`prompt_family`; the level names come from `Taxonomy.level_names` (e.g. "order", "family",
"genus", "species" for CUB-200).
"""

from __future__ import annotations

import random
from typing import Literal

from hiertrain.base.errors import HierError

SYSTEM_IMAGE = (
    "You are an expert in hierarchical image classification. Given an image, classify it at "
    "its current hierarchy level by selecting the most appropriate option from the provided "
    "choices (labeled with letters). Respond with only the corresponding letter."
)
SYSTEM_TEXT = "You are a helpful assistant."
ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCDEFGHIJ"
DEFAULT_SUBJECT = "object"

# The paper's question wordings per dataset family, 5 variants each (`--prompt_order` 0-4 of its
# scripts, taken from the Qwen2.5-VL scripts evaluation/vllm/qwen/*.py and
# evaluation/llm/qwen/eval_text_*.py at commit c86f23af). Placeholders: {level} (the level's
# name), {subject} (the data config's noun: "bird", "plant", "animal"), {label} (the leaf's name,
# text mode). Where the paper hard-codes the noun (ImageNet, Food) the string does too.
# Differences between the paper's scripts (the Qwen wording is kept): LLaVA's text scripts lower-case
# {label}; the og_llm Qwen CUB/iNat text variant 0 has no trailing "?".
IMAGE_WORDINGS: dict[str, tuple[str, ...]] = {
    "cub": (  # evaluation/vllm/qwen/eval_CUB.py (the paper's literal "bird" = subject)
        "Based on taxonomy, what is the {level} of the {subject} in this image?",
        "Based on the image, what is the taxonomic classification at the {level} level?",
        "What is the taxonomic classification of the {subject} in this image?",
        "How can the {subject} in this image be categorized taxonomically?",
        "What is the systematic position of the {subject} shown in the image?",
    ),
    "inat": (  # eval_natural_plant.py / eval_natural_animal.py ("plant" / "animal" = subject)
        "Based on taxonomy, where does the {subject} in the image fall in terms of {level}?",
        "Given the {subject} in the image, what is its taxonomic classification at the {level} level?",
        "What could the {subject} in the image be classified as?",
        "How can the {subject} in the image be taxonomically categorized?",
        "What is the systematic position of the {subject} in the image in the biological classification hierarchy?",
    ),
    "imagenet_animal": (  # eval_animal.py: no level named
        "What is the taxonomic category of the animal in this image?",
        "How can the animal in this image be categorized in taxonomy?",
        "Based on classification, what type of animal is this?",
        "What is the hierarchical class of the animal shown here?",
        "Where does this animal belong in the taxonomic hierarchy?",
    ),
    "imagenet_artifact": (  # eval_artifact.py
        "What is the taxonomic category of the object in this image?",
        "How can the object in this image be categorized in taxonomy?",
        "Based on classification, what type of object is this?",
        "What is the hierarchical class of the object shown here?",
        "Where does this object belong in the taxonomic hierarchy?",
    ),
    "food": (  # eval_food.py ("food item" in 0, 1, 4; "food" in 2, 3, as the script has them)
        "What is the taxonomic category of the food item in this image?",
        "How can the food item in this image be categorized in taxonomy?",
        "Based on classification, what type of food is this?",
        "What is the hierarchical class of the food shown here?",
        "Where does this food item belong in the taxonomic hierarchy?",
    ),
}
_TEXT_RANKED = (  # eval_text_cub.py and eval_text_natural.py share these
    "Based on taxonomy, where does {label} fall in terms of {level}?",
    "Given the {label}, what is its taxonomic classification at the {level} level?",
    "What could {label} be classified as?",
    "How can {label} be taxonomically categorized?",
    "What is the systematic position of {label} in the biological classification hierarchy?",
)
TEXT_WORDINGS: dict[str, tuple[str, ...] | None] = {
    "cub": _TEXT_RANKED,
    "inat": _TEXT_RANKED,
    "imagenet_animal": (  # eval_text_animal.py: no level named
        "Given the {label}, what is its taxonomic classification?",
        "Based on taxonomy, where does {label} fall?",
        "What could {label} be classified as?",
        "How can {label} be taxonomically categorized?",
        "What is the systematic position of {label} in the biological classification hierarchy?",
    ),
    "imagenet_artifact": (  # eval_text_artifact.py: variant 4 differs from the animal one
        "Given the {label}, what is its taxonomic classification?",
        "Based on taxonomy, where does {label} fall?",
        "What could {label} be classified as?",
        "How can {label} be taxonomically categorized?",
        "What is the categorical classification of {label} in the artifact taxonomy?",
    ),
    "food": None,  # the paper has no text-only Food-101 script, so no wording to reproduce
}
# The calibration organism's own short wording (hiertrain.organisms): trained and evaluated alike,
# as a real model is asked in its own template; never one of the paper's families.
IMAGE_WORDINGS["organism"] = ("Which {level} is this?",)
TEXT_WORDINGS["organism"] = ("Which {level} is {label}?",)
PAPER_FAMILIES: tuple[str, ...] = tuple(f for f in IMAGE_WORDINGS if f != "organism")
PROMPT_FAMILIES: tuple[str, ...] = tuple(IMAGE_WORDINGS)
DEFAULT_FAMILY = "cub"
# Backwards-compatible names: the default (CUB) family.
IMAGE_VARIANTS = IMAGE_WORDINGS[DEFAULT_FAMILY]
TEXT_VARIANTS = _TEXT_RANKED

Mode = Literal["image", "text"]


def check_family(family: str, mode: str | None = None) -> None:
    """HierError unless `family` has wordings (for `mode`, when given)."""
    if family not in IMAGE_WORDINGS:
        raise HierError(f"unknown prompt_family {family!r} (use one of {', '.join(PROMPT_FAMILIES)})")
    if mode == "text" and TEXT_WORDINGS[family] is None:
        raise HierError(f"prompt_family {family!r} has no text-mode wording (the paper asks it about images only)")


def _variant(templates: tuple[str, ...], variant: int) -> str:
    if not 0 <= variant < len(templates):
        raise HierError(f"prompt variant {variant} does not exist (use 0..{len(templates) - 1})")
    return templates[variant]


def image_prompt(variant: int, level_name: str, subject: str = DEFAULT_SUBJECT, family: str = DEFAULT_FAMILY) -> str:
    """The paper's image question `variant` (0-4) of dataset `family` for one level."""
    check_family(family, "image")
    return _variant(IMAGE_WORDINGS[family], variant).format(level=level_name, subject=subject)


def text_prompt(variant: int, level_name: str, leaf_label: str, family: str = DEFAULT_FAMILY) -> str:
    """The text-only twin of `image_prompt`: the image is replaced by the leaf's name."""
    check_family(family, "text")
    return _variant(TEXT_WORDINGS[family], variant).format(level=level_name, label=leaf_label)


def asked_levels(truths: list[str | None], mode: Mode) -> list[int]:
    """Level indices put to the model: every level with a truth, but not the leaf in text
    mode (the leaf's name is in the question, so asking it would test reading, not knowledge)."""
    present = [i for i, truth in enumerate(truths) if truth is not None]
    if mode == "text":
        return present[:-1]
    if mode == "image":
        return present
    raise HierError(f"unknown prompt mode {mode!r} (use 'image' or 'text')")


def leaf_label(mode: str) -> str:
    """What `leaf_accuracy` measures in `mode`: the leaf (image), or in text mode the deepest
    asked level, since the leaf is named in the question and never asked."""
    return "deepest asked level" if mode == "text" else "leaf"


def shuffled_options(options: list[str], seed: int, sample_id: int, level: int) -> list[str]:
    """Options in a seeded order that depends on (seed, sample, level) only.

    A string seed hashes through SHA-512 inside `random`, so the order is the same in every
    process and Python version, unlike `hash()` which is salted per process.
    """
    out = list(options)
    random.Random(f"{seed}:{sample_id}:{level}").shuffle(out)
    return out


def question_text(prompt: str, options: list[str]) -> str:
    """Prompt, lettered options one a line, then the answer instruction (the paper's layout)."""
    if not options:
        raise HierError(f"no options for question {prompt!r}")
    if len(options) > len(LETTERS):
        raise HierError(f"{len(options)} options but only {len(LETTERS)} letters ({prompt!r})")
    lines = [f"{letter}. {option}" for letter, option in zip(LETTERS, options)]
    return prompt + "\n" + "\n".join(lines) + "\n" + ANSWER_INSTRUCTION


# ---- joint inference (data.inference: joint): one question per image asking every level
SYSTEM_IMAGE_JOINT = (
    "You are an expert in hierarchical image classification. Given an image, classify it at "
    "every hierarchy level asked by selecting the most appropriate option of each level from its "
    "choices (labeled with letters). Respond with one line per level: the level's name, a colon "
    "and the corresponding letter."
)
JOINT_INSTRUCTION = (
    "Answer with one line per level, in the order asked: the level's name, a colon and the "
    "option's letter from that level's choices."
)


def joint_system(mode: Mode) -> str:
    """The system prompt of a joint question (SYSTEM_IMAGE asks for one letter only)."""
    return SYSTEM_IMAGE_JOINT if mode == "image" else SYSTEM_TEXT


def joint_question(levels: list[tuple[str, str, list[str]]]) -> str:
    """Every (level name, question, options) as a block "name: question" + lettered options,
    blocks apart by a blank line, then `JOINT_INSTRUCTION` (read by `answers.joint_letters`)."""
    if not levels:
        raise HierError("a joint question needs at least one level")
    blocks = [question_text(f"{name}: {prompt}", options).rsplit("\n", 1)[0] for name, prompt, options in levels]
    return "\n\n".join(blocks) + "\n\n" + JOINT_INSTRUCTION


def chat_messages(question: str, mode: Mode) -> list[dict]:
    """Chat-template messages: system prompt, then the user turn (image placeholder first)."""
    if mode == "image":
        system, user = SYSTEM_IMAGE, [{"type": "image"}, {"type": "text", "text": question}]
    elif mode == "text":
        system, user = SYSTEM_TEXT, [{"type": "text", "text": question}]
    else:
        raise HierError(f"unknown prompt mode {mode!r} (use 'image' or 'text')")
    return [
        {"role": "system", "content": [{"type": "text", "text": system}]},
        {"role": "user", "content": user},
    ]


# ---- system prompt and chat mode (protocol data: in run.json and the run identity)
# "paper": the system prompt hiertrain always sends (SYSTEM_IMAGE / SYSTEM_TEXT or the condition's),
# the paper's Qwen scripts' own; "model_default": the model's own default system message (InternVL:
# its conversation template's, which the paper's model.chat sent; None in a family = no system turn,
# so the chat template's own default applies, e.g. Qwen2.5's "You are a helpful assistant.");
# "none": no system turn; any other string: that text.
SYSTEM_PROMPTS = ("paper", "model_default", "none")
# The paper's base-LLM scripts without a chat template (evaluation/og_llm/qwen/eval_text_og_natural.py:168-169).
RAW_ANSWER_SUFFIX = " Answer:"


def check_system_prompt(policy: str) -> None:
    """A misspelt keyword must not become a one-word system prompt: custom text needs a space."""
    if policy in SYSTEM_PROMPTS:
        return
    if not isinstance(policy, str) or not policy.strip() or (" " not in policy.strip()):
        raise HierError(
            f"system_prompt {policy!r} is not one of {', '.join(SYSTEM_PROMPTS)} nor a system text (a sentence)"
        )


def with_system_prompt(messages: list[dict], policy: str, model_default: str | None = None) -> list[dict]:
    """`messages` (system turn first, as built by chat_messages) under the `policy`."""
    check_system_prompt(policy)
    if policy == "paper":
        return messages
    rest = messages[1:] if messages and messages[0]["role"] == "system" else list(messages)
    text = model_default if policy == "model_default" else None if policy == "none" else policy
    if text is None:
        return rest
    return [{"role": "system", "content": [{"type": "text", "text": text}]}, *rest]


def raw_prompt(question: str) -> str:
    """The non-chat prompt of the paper's base-LLM runs: the question, then " Answer:"."""
    return question + RAW_ANSWER_SUFFIX


# CLIP scores an option by its similarity to this text (also used to mine similar distractors).
CLIP_TEXT_TEMPLATE = "a photo of a {label}."


# ---- probing prompts (features are read, nothing is answered)
# The paper's visual probing prompt (probing/vlm_probe_data_gen.py): a neutral request, so the
# features are not steered towards any taxonomy level.
PROBE_IMAGE_SYSTEM = "You are an assistant."
PROBE_IMAGE_PROMPT = "Describe this image."
# Paper's text probing: text variant 1 is its question; the answer sentence is optional.
PROBE_TEXT_VARIANT = 1
PROBE_ANSWER_SENTENCE = " It belongs to {label}."


def probe_image_messages(prompt: str = PROBE_IMAGE_PROMPT, system: str = PROBE_IMAGE_SYSTEM) -> list[dict]:
    return [
        {"role": "system", "content": [{"type": "text", "text": system}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
    ]


def probe_text_messages(prompt: str, system: str = SYSTEM_TEXT) -> list[dict]:
    return [
        {"role": "system", "content": [{"type": "text", "text": system}]},
        {"role": "user", "content": [{"type": "text", "text": prompt}]},
    ]
