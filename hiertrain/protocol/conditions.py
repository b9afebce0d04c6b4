"""The question conditions: how a level is put to the model besides the plain 4-choice question.

The paper (arXiv 2505.24840, `prompt_engineering/` of its code at c86f23af) asks whether prompting
fixes hierarchical consistency; hiertrain adds an open-set mode to ask whether the closed-set
format inflates the scores. One run = one condition (`data.condition`, recorded in run.json; a
report refuses to mix them):

- ``plain``: the paper's question (hiertrain.protocol.prompts), nothing added.
- ``taxonomy``: taxonomy in context (`prompt_engineering/taxonomy/eval_CUB_tax_qwen.py`): the
  system prompt is ``TAXONOMY_SYSTEM`` + the taxonomy file rendered as the script does,
  ``str(json.load(f))`` (the Python dict repr, single quotes). As in that Qwen script the answer
  line follows the last option with no newline (``D. pelecaniformesAnswer with ...``).
- ``cot``: chain of thought (`prompt_engineering/cot/*/eval_img_*_cot.py`): ``COT_PREFIX``
  inserted at the start of the answer line. The Qwen scripts spell ``Let’s`` with U+2019, the
  InternVL/LLaVA scripts with an ASCII apostrophe (`cot_apostrophe`).
- ``bio_cot``: the Qwen iNat scripts `prompt_engineering/bio_cot/eval_{animal,plant}_bio.py`: the
  system prompt is replaced by ``BIO_COT_SYSTEM[subject]`` (subject "animal" or "plant").
- ``binary``: `prompt_engineering/eval_CUB_binary.py`: one yes/no statement per option of a level
  with its own system prompt, scored as `utils/metric_binary.py` does (`binary_choice`).
- ``open``: hiertrain's own (not the paper's): the level's question without options and
  ``OPEN_INSTRUCTION``; the reply is matched to the taxonomy's nodes (hiertrain.protocol.open_set).

Reply parsing of the CoT conditions under `answer_parser: strict` is `final_letter` (the rule is
in its docstring); `answer_parser: paper` keeps the paper's first-letter-anywhere rule.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hiertrain.base.errors import HierError
from hiertrain.protocol.prompts import ANSWER_INSTRUCTION, LETTERS, SYSTEM_TEXT

CONDITIONS: tuple[str, ...] = ("plain", "taxonomy", "cot", "bio_cot", "binary", "open")
# Conditions whose replies are generated text (letter logits cannot answer them).
GENERATE_ONLY: tuple[str, ...] = ("cot", "binary", "open")
# The paper asks these only about images; their strings say "the image".
IMAGE_ONLY: tuple[str, ...] = ("bio_cot", "binary")

# ---- taxonomy in context (eval_CUB_tax_qwen.py: system message)
TAXONOMY_SYSTEM = "You are a helpful assistant. Here is a taxonomy: "

# ---- chain of thought (cot/qwen/*: U+2019; cot/internvl/*, cot/llava/*: ASCII)
COT_PREFIX = {"typographic": "Let\u2019s think step by step. ", "ascii": "Let's think step by step. "}
COT_APOSTROPHES: tuple[str, ...] = tuple(COT_PREFIX)

# ---- biology-informed chain of thought (bio_cot/eval_{animal,plant}_bio.py: system prompt)
_BIO_HEAD = (
    "You are an expert in hierarchical image classification. Given an image and a multiple-choice question "
    "about a specific taxonomy level (e.g., genus, family), first infer the most likely species from the image, "
    "then reason step-by-step through the taxonomy hierarchy to identify the correct label. Respond with only "
    "the letter corresponding to the correct answer.\n"
)
BIO_COT_SYSTEM = {
    "animal": _BIO_HEAD
    + "Example: if the image depicts *Caenurgina crassiuscula*, then the correct genus is *Caenurgina*, family is "
    "*Erebidae*, order is *Lepidoptera*, class is *Insecta*, phylum is *Arthropoda*, and kingdom is *Animalia*.\n"
    "For instance, if the question is:\n*Given the animal in the image, what is its taxonomic classification at "
    "the phylum level?*\nA. Annelida\nB. Arthropoda\nC. Mollusca\nD. Chordata\nYou should select option **B**, "
    "labeled with *Arthropoda*.",
    "plant": _BIO_HEAD
    + "Example: if the image depicts *Oenothera curtiflora*, then the correct genus is *Oenothera*, family is "
    "*Onagraceae*, order is *Myrtales*, class is *Magnoliopsida*, phylum is *Tracheophyta*, and kingdom is *Plantae*.\n"
    "For instance, if the question is:\n*Given the plant in the image, what is its taxonomic classification at "
    "the phylum level?*\nA. Chlorophyta\nB. Bryophyta\nC. Rhodophyta\nD. Tracheophyta\nYou should select option "
    "**D**, labeled with *Tracheophyta*.",
}

# ---- binary statements (eval_CUB_binary.py); the script hard-codes "bird" and the CUB rank
BINARY_SYSTEM = (
    "You are an expert in hierarchical image classification. Given an image and a corresponding statement, "
    "determine whether the statement accurately reflects the content of the image. Respond with a single word: "
    "Yes or No."
)
BINARY_STATEMENT = "The {subject} in the image belongs to the {level} {item}."
BINARY_QUESTION = "Is this statement correct? Please answer Yes or No."

# ---- open set (hiertrain's wording, not the paper's)
OPEN_INSTRUCTION = "Answer with the name only."
OPEN_SYSTEM_IMAGE = (
    "You are an expert in hierarchical image classification. Given an image, name its class at the "
    "requested hierarchy level."
)
OPEN_SYSTEM_TEXT = SYSTEM_TEXT


def check_condition(condition: str, mode: str, subject: str | None = None, cot_apostrophe: str = "typographic") -> None:
    """HierError unless `condition` exists and can be asked in `mode` (with `subject` for bio_cot)."""
    if condition not in CONDITIONS:
        raise HierError(f"unknown condition {condition!r} (use one of {', '.join(CONDITIONS)})")
    if condition in IMAGE_ONLY and mode != "image":
        raise HierError(f"condition {condition!r} is image-only (the paper's strings are about an image)")
    if condition == "bio_cot" and subject not in BIO_COT_SYSTEM:
        raise HierError(
            f"condition 'bio_cot' has the paper's prompts for subject {' or '.join(map(repr, BIO_COT_SYSTEM))} "
            f"(iNat21), not {subject!r}"
        )
    if cot_apostrophe not in COT_PREFIX:
        raise HierError(f"cot_apostrophe {cot_apostrophe!r} is not one of {', '.join(COT_APOSTROPHES)}")


def taxonomy_context(path: str | Path) -> str:
    """The taxonomy file as the paper puts it in context: `str(json.load(f))`, the Python repr of
    the parsed JSON (CUB-200: 17,137 characters, starting "{'Black-footed Albatross': [...")."""
    from hiertrain.base.resources import read_data_text, resolve_data_path

    real = resolve_data_path(path)
    try:
        return str(json.loads(read_data_text(real)))
    except json.JSONDecodeError as err:
        raise HierError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None


def lettered(options: list[str]) -> str:
    """The option lines, "A. x\\nB. y" (the paper's layout)."""
    if len(options) > len(LETTERS):
        raise HierError(f"{len(options)} options but only {len(LETTERS)} letters")
    return "\n".join(f"{letter}. {option}" for letter, option in zip(LETTERS, options))


def closed_question(prompt: str, options: list[str], condition: str, cot_apostrophe: str = "typographic") -> str:
    """The user text of a multiple-choice level under `condition` (plain, taxonomy, cot, bio_cot)."""
    if not options:
        raise HierError(f"no options for question {prompt!r}")
    if condition == "taxonomy":  # eval_CUB_tax_qwen.py: no "\n" before the answer line
        return prompt + "\n" + lettered(options) + ANSWER_INSTRUCTION
    if condition == "cot":
        return prompt + "\n" + lettered(options) + "\n" + COT_PREFIX[cot_apostrophe] + ANSWER_INSTRUCTION
    return prompt + "\n" + lettered(options) + "\n" + ANSWER_INSTRUCTION


def open_question(prompt: str) -> str:
    """The user text of an open-set level: the question, then hiertrain's answer instruction."""
    if "{" in prompt:
        raise HierError(f"unfilled placeholder in {prompt!r}")
    return prompt + "\n" + OPEN_INSTRUCTION


def binary_statement(subject: str, level_name: str, item: str) -> str:
    """One statement of eval_CUB_binary.py, e.g. "The bird in the image belongs to the order x."."""
    return BINARY_STATEMENT.format(subject=subject, level=level_name, item=item)


def binary_question(statement: str) -> str:
    return statement + "\n" + BINARY_QUESTION


def binary_value(reply: str) -> int:
    """The paper's reading of a yes/no reply: `.strip().lower()` starting with "y" = 1, with "n" = 0,
    anything else = -1 (counted as not "Yes")."""
    text = reply.strip().lower()
    return 1 if text.startswith("y") else 0 if text.startswith("n") else -1


def binary_choice(values: list[int]) -> int | None:
    """utils/metric_binary.py: the level's prediction is the first option (in letter order) whose
    statement got "Yes"; None when none did. The level is correct iff that option is the truth, so a
    "Yes" to an earlier-lettered distractor or "No" to every option makes the level wrong."""
    return next((i for i, value in enumerate(values) if value == 1), None)


# "The answer is B", "Answer: (C)", "final answer: **D**", "option B" ... the letter after the phrase.
_ANSWER_PHRASE = re.compile(
    r"(?:answer|option|choice)\s*(?:is|would be|:|-)?\s*[:\-]?\s*[(\[*\"'`]*\s*([A-J])(?![A-Za-z])",
    re.IGNORECASE,
)


def final_letter(reply: str, options: list[str]) -> int | None:
    """The option a chain-of-thought reply ends on (None = unparseable, counted and scored wrong).

    Rule, first that applies:
    1. the whole reply is a direct answer `hiertrain.protocol.answers.parse_letter` reads ("B", "B.",
       "Answer: B", the text of one option);
    2. the last "answer/option/choice (is|:) X" phrase in the reply (X an upper-case letter of
       the options; the phrase words in any case);
    3. the last non-empty line, read by `parse_letter`.
    A letter beyond the number of options is unparseable.
    """
    from hiertrain.protocol.answers import parse_letter

    direct = parse_letter(reply, options)
    if direct is not None:
        return direct
    phrases = [m.group(1) for m in _ANSWER_PHRASE.finditer(reply) if m.group(1).isupper()]
    if phrases:
        index = LETTERS.index(phrases[-1])
        return index if index < len(options) else None
    lines = [line for line in reply.strip().splitlines() if line.strip()]
    return parse_letter(lines[-1], options) if lines else None


def system_prompt(condition: str, mode: str, subject: str | None = None, context: str | None = None) -> str | None:
    """The condition's system prompt, or None for the plain one of `mode` (hiertrain.protocol.prompts)."""
    if condition == "taxonomy":
        if context is None:
            raise HierError("condition 'taxonomy' needs the taxonomy (data.taxonomy) to put in context")
        return TAXONOMY_SYSTEM + context
    if condition == "bio_cot":
        return BIO_COT_SYSTEM[str(subject)]
    if condition == "binary":
        return BINARY_SYSTEM
    if condition == "open":
        return OPEN_SYSTEM_IMAGE if mode == "image" else OPEN_SYSTEM_TEXT
    return None


def messages(question: str, mode: str, system: str | None) -> list[dict]:
    """Chat messages of one question: `system` (None = the plain one) then the user turn, the
    image placeholder first as in hiertrain.protocol.prompts.chat_messages."""
    from hiertrain.protocol.prompts import chat_messages

    out = chat_messages(question, mode)  # type: ignore[arg-type]
    if system is not None:
        out[0] = {"role": "system", "content": [{"type": "text", "text": system}]}
    return out


# ---- inference modes (data.inference; issue 26): how the levels of one image relate
# independent: each level its own one-question chat (the paper; hiertrain's default).
# oracle_parent: level k asked after the levels < k as earlier chat turns, each answered with its
#   true letter (knowledge of a level apart from error propagation).
# stepwise: the same chat, each earlier turn answered by the model itself (the KV cache grows
#   turn by turn, hiertrain.vlm.stepwise).
# joint: one question per image asking every level (hiertrain.protocol.prompts.joint_question), the
#   reply read line by line (hiertrain.protocol.answers.joint_letters).
INFERENCE_MODES: tuple[str, ...] = ("independent", "oracle_parent", "stepwise", "joint")


def check_inference(inference: str, condition: str, circular: bool) -> None:
    """HierError unless the inference mode and circular evaluation can be asked under `condition`."""
    if inference not in INFERENCE_MODES:
        raise HierError(f"inference {inference!r} is not one of {', '.join(INFERENCE_MODES)}")
    if inference != "independent" and condition != "plain":
        raise HierError(f"inference {inference!r} is for the plain condition only, not {condition!r}")
    if circular and condition in ("binary", "open"):
        raise HierError(f"circular evaluation rotates lettered options; condition {condition!r} has none")
    if circular and inference in ("stepwise", "joint"):
        raise HierError(f"circular evaluation is asked as extra suffixes of independent or oracle_parent levels, not with inference {inference!r}")


def turn_messages(first: list[dict], questions: list[str], answers: list[str]) -> list[dict]:
    """`first` (one question's chat: system turn, user turn with the image) continued: after each
    answer an assistant turn, then the next question as a user turn (text only: the image stays
    in the first turn). `answers[k]` answers the question before `questions[k]`."""
    if len(answers) != len(questions):
        raise HierError(f"{len(answers)} answers for {len(questions)} follow-up questions")
    out = list(first)
    for answer, question in zip(answers, questions):
        out.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        out.append({"role": "user", "content": [{"type": "text", "text": question}]})
    return out
