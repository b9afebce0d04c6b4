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
from typing import Any, ClassVar

from hiertrain.base.errors import HierError
from hiertrain.protocol.prompts import ANSWER_INSTRUCTION, LETTERS, SYSTEM_TEXT

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
    condition_of(condition).check(mode, subject)
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
    return condition_of(condition).question(prompt, options, cot_apostrophe)


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
    return condition_of(condition).system(mode, subject, context)


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
    cond = condition_of(condition)
    if inference not in cond.inference_modes:
        raise HierError(f"inference {inference!r} is for the plain condition only, not {condition!r}")
    if circular and not cond.lettered:
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


# ---- the conditions as classes: each owns its text, its reply reading and its constraints.
# Adding a condition is one class decorated with `@register` (docs/ARCHITECTURE.md shows one).


class Condition:
    """One way of putting a level to the model. Subclass, set `name`, override what differs,
    decorate with `@register`; nothing outside this module branches on a condition's name."""

    name: ClassVar[str] = ""
    generate_only: ClassVar[bool] = False  # replies are text that letter logits cannot answer
    image_only: ClassVar[bool] = False  # the paper's strings say "the image"
    needs_taxonomy: ClassVar[bool] = False  # data.taxonomy must be given
    lettered: ClassVar[bool] = True  # a closed question with lettered options (circular can rotate them)
    asks_options: ClassVar[bool] = True  # the level's options are put to the model (open: no)
    per_statement: ClassVar[bool] = False  # one request per option's statement (`statements`), not per level
    inference_modes: ClassVar[tuple[str, ...]] = ("independent",)
    run_wide_prefix: ClassVar[bool] = False  # the system turn opens every prompt of the run (prefilled once)
    uses_apostrophe: ClassVar[bool] = False  # data.cot_apostrophe changes the text (recorded in run.json)
    final_letter: ClassVar[bool] = False  # strict parser reads a reasoning reply's final letter
    open_set: ClassVar[bool] = False  # the report scores it in its open-set section, apart from closed runs
    raw_prompt: ClassVar[bool] = False  # can be asked as the base-LLM raw prompt (chat: false)

    def check(self, mode: str, subject: str | None) -> None:
        """HierError unless this condition can be asked in `mode` about `subject`."""
        if self.image_only and mode != "image":
            raise HierError(f"condition {self.name!r} is image-only (the paper's strings are about an image)")

    def check_wording(self, mode: str, family: str, variant: int) -> None:
        """HierError unless the question wording (`family`, `variant` in `mode`) suits this condition (default: any)."""

    def context(self, taxonomy_path: str | Path | None) -> str | None:
        """The text this condition puts in context from the taxonomy file (default: none)."""
        return None

    def system(self, mode: str, subject: str | None = None, context: str | None = None) -> str | None:
        """The system prompt, or None for the plain one of `mode` (hiertrain.protocol.prompts)."""
        return None

    def question(self, prompt: str, options: list[str], cot_apostrophe: str = "typographic") -> str:
        """The user text of one level: `prompt` with `options` lettered, then the answer line."""
        from hiertrain.protocol.prompts import question_text

        return question_text(prompt, options)

    def statements(self, subject: str | None, level_name: str, options: list[str]) -> list[str] | None:
        """One yes/no question per option, or None when the level is one question (default)."""
        return None

    def read(self, reply: str, options: list[str], parser: str = "strict") -> int | None:
        """The option index a generated reply chooses (None = unparseable), by `answer_parser`."""
        from hiertrain.protocol.answers import paper_letter, parse_letter

        if parser == "paper":
            return paper_letter(reply, len(options))
        return final_letter(reply, options) if self.final_letter else parse_letter(reply, options)

    def sample(self, reader: Any, item: dict[str, Any], mode: str, replies: list[str]) -> Any:
        """A sample's prediction from its replies; `reader` is the answerer (`hiertrain.answerers`:
        its `letters_prediction`, `binary_prediction`, `open_prediction` build the SamplePrediction)."""
        return reader.letters_prediction(item, mode, replies)


REGISTRY: dict[str, Condition] = {}


def register(cls: type[Condition]) -> type[Condition]:
    """Add a condition class to `REGISTRY` under its `name` (a class decorator)."""
    if not cls.name or cls.name in REGISTRY:
        raise HierError(f"condition class {cls.__name__} needs a new name, not {cls.name!r}")
    REGISTRY[cls.name] = cls()
    return cls


def condition_of(name: str) -> Condition:
    """The registered condition `name`; a one-line HierError listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise HierError(f"unknown condition {name!r} (use one of {', '.join(REGISTRY)})") from None


@register
class Plain(Condition):
    """The paper's question (hiertrain.protocol.prompts), nothing added."""

    name = "plain"
    inference_modes = INFERENCE_MODES
    raw_prompt = True


@register
class Taxonomy(Condition):
    """Taxonomy in context (eval_CUB_tax_qwen.py)."""

    name = "taxonomy"
    needs_taxonomy = True
    run_wide_prefix = True

    def context(self, taxonomy_path: str | Path | None) -> str | None:
        return taxonomy_context(str(taxonomy_path))

    def system(self, mode: str, subject: str | None = None, context: str | None = None) -> str | None:
        if context is None:
            raise HierError("condition 'taxonomy' needs the taxonomy (data.taxonomy) to put in context")
        return TAXONOMY_SYSTEM + context

    def question(self, prompt: str, options: list[str], cot_apostrophe: str = "typographic") -> str:
        return _options_first(prompt, options) + ANSWER_INSTRUCTION  # no "\n" before the answer line


@register
class Cot(Condition):
    """Chain of thought (cot/*/eval_img_*_cot.py): `COT_PREFIX` opens the answer line."""

    name = "cot"
    generate_only = True
    uses_apostrophe = True
    final_letter = True

    def question(self, prompt: str, options: list[str], cot_apostrophe: str = "typographic") -> str:
        return _options_first(prompt, options) + "\n" + COT_PREFIX[cot_apostrophe] + ANSWER_INSTRUCTION


@register
class BioCot(Condition):
    """Biology-informed chain of thought (bio_cot/eval_{animal,plant}_bio.py): its system prompt."""

    name = "bio_cot"
    image_only = True
    final_letter = True

    def check(self, mode: str, subject: str | None) -> None:
        super().check(mode, subject)
        if subject not in BIO_COT_SYSTEM:
            raise HierError(
                f"condition 'bio_cot' has the paper's prompts for subject {' or '.join(map(repr, BIO_COT_SYSTEM))} "
                f"(iNat21), not {subject!r}"
            )

    def system(self, mode: str, subject: str | None = None, context: str | None = None) -> str | None:
        return BIO_COT_SYSTEM[str(subject)]

    def question(self, prompt: str, options: list[str], cot_apostrophe: str = "typographic") -> str:
        return _options_first(prompt, options) + "\n" + ANSWER_INSTRUCTION


@register
class Binary(Condition):
    """eval_CUB_binary.py: a yes/no statement per option, read by `binary_choice`."""

    name = "binary"
    generate_only = True
    image_only = True
    lettered = False
    per_statement = True

    def system(self, mode: str, subject: str | None = None, context: str | None = None) -> str | None:
        return BINARY_SYSTEM

    def statements(self, subject: str | None, level_name: str, options: list[str]) -> list[str] | None:
        return [binary_question(binary_statement(str(subject), level_name, item)) for item in options]

    def sample(self, reader: Any, item: dict[str, Any], mode: str, replies: list[str]) -> Any:
        return reader.binary_prediction(item, mode, replies)


@register
class Open(Condition):
    """hiertrain's open set: no options; the reply matched to the taxonomy (hiertrain.protocol.open_set)."""

    name = "open"
    generate_only = True
    needs_taxonomy = True
    lettered = False
    asks_options = False
    open_set = True

    def check_wording(self, mode: str, family: str, variant: int) -> None:
        from hiertrain.protocol.prompts import IMAGE_WORDINGS, TEXT_WORDINGS

        template = (IMAGE_WORDINGS if mode == "image" else TEXT_WORDINGS)[family][variant]
        if "{level}" not in template:
            raise HierError(
                f"condition 'open' needs a question that names the level; prompt_family {family!r} "
                f"variant {variant} does not ({template!r})"
            )

    def system(self, mode: str, subject: str | None = None, context: str | None = None) -> str | None:
        return OPEN_SYSTEM_IMAGE if mode == "image" else OPEN_SYSTEM_TEXT

    def question(self, prompt: str, options: list[str], cot_apostrophe: str = "typographic") -> str:
        return open_question(prompt)

    def sample(self, reader: Any, item: dict[str, Any], mode: str, replies: list[str]) -> Any:
        return reader.open_prediction(item, mode, replies)


def _options_first(prompt: str, options: list[str]) -> str:
    if not options:
        raise HierError(f"no options for question {prompt!r}")
    return prompt + "\n" + lettered(options)


# The built-in names, in registry order (a condition registered later is in REGISTRY, not here).
CONDITIONS: tuple[str, ...] = tuple(REGISTRY)
GENERATE_ONLY: tuple[str, ...] = tuple(n for n, c in REGISTRY.items() if c.generate_only)
IMAGE_ONLY: tuple[str, ...] = tuple(n for n, c in REGISTRY.items() if c.image_only)
