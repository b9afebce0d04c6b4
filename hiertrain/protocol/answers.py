"""Reading the chosen option out of a model's reply.

The paper's scripts take the first of "A", "B", "C", "D" (in that order) that occurs
anywhere in the reply, so "D. Asteraceae" counts as A. `parse_letter` reads only
what is unambiguous: a letter standing alone at the start ("B", "B.", "(B)", " b"), an
"Answer: C" / "The answer is C" phrase, or the text of exactly one option. Anything else
is None ("unparseable"), which the metrics count as wrong, never as a guess.
`paper_letter` keeps the paper's rule so results can be compared with theirs.
"""

from __future__ import annotations

import re

from hiertrain.protocol.prompts import LETTERS

# Wrappers models put around an answer: markdown bold/code, quotes.
_WRAPPERS = "*`\"' \t\r\n"
# "Answer:", "The answer is", "The correct option is", "Final answer -" ... before the answer.
_PREFIX = re.compile(
    r"^(?:the\s+)?(?:(?:correct|final|best|right)\s+)?(?:answer|option|choice)"
    r"(?:\s+is)?\s*[:\-]?\s*",
    re.IGNORECASE,
)
# A letter standing alone: "(B)", "[B]", or "B" followed by the end, punctuation or a line
# break. "A bird ..." is an article, not option A, so a letter followed by a space and a word
# counts only when that word is the same option's text (checked in `_letter_at_start`).
_BRACKETED = re.compile(r"^[(\[]\s*([A-Ja-j])\s*[)\]]")
_ALONE = re.compile(r"^([A-Ja-j])(?=$|[.):,;]|\s*\n)")
_LETTER_THEN_TEXT = re.compile(r"^([A-J])\s+(\S.*)$", re.DOTALL)
_NON_WORD = re.compile(r"[\W_]+")


def _norm(text: str) -> str:
    """Casefold and reduce punctuation/underscores/hyphens to single spaces."""
    return _NON_WORD.sub(" ", text.casefold()).strip()


def _option_index(text: str, options: list[str]) -> int | None:
    """Index of the one option whose normalised text equals `text`'s, else None."""
    key = _norm(text)
    if not key:
        return None
    hits = {i for i, option in enumerate(options) if _norm(option) == key}
    return hits.pop() if len(hits) == 1 else None


def _letter_at_start(text: str, options: list[str]) -> int | None:
    for pattern in (_BRACKETED, _ALONE):
        match = pattern.match(text)
        if match:
            return LETTERS.index(match.group(1).upper())
    match = _LETTER_THEN_TEXT.match(text)
    if match:
        index = LETTERS.index(match.group(1))
        if index < len(options) and _option_index(match.group(2), [options[index]]) == 0:
            return index
    return None


def parse_letter(reply: str, options: list[str]) -> int | None:
    """Index of the option the reply chose, or None when it is unparseable.

    A letter beyond the number of options is unparseable. When a reply gives both a letter and
    a text ("B. Asteraceae"), the letter wins: the prompt asks for the letter.
    """
    text = reply.strip(_WRAPPERS)
    for candidate in (text, _PREFIX.sub("", text, count=1).strip(_WRAPPERS)):
        index = _letter_at_start(candidate, options)
        if index is not None:
            return index if index < len(options) else None
        index = _option_index(candidate, options)
        if index is not None:
            return index
    return None


def paper_letter(reply: str, n: int = 4) -> int | None:
    """The paper's rule, for comparison only: the first of A, B, C, ... (n letters, in
    alphabetical order, case-sensitive) contained anywhere in the reply."""
    return next((i for i, letter in enumerate(LETTERS[:n]) if letter in reply), None)


_JOINT_LINE = re.compile(r"^\s*(?P<name>[^:\n]+?)\s*:\s*(?P<rest>.*?)\s*$")


def joint_letters(reply: str, names: list[str], options: list[list[str]]) -> list[int | None]:
    """The option index per level of a joint reply ("order: B" one line per level, as
    `prompts.JOINT_INSTRUCTION` asks), read with `parse_letter` after the colon; a level with no
    line, an unreadable line or two lines that disagree is None (unparseable, counted wrong)."""
    keys = [_norm(n) for n in names]
    found: list[set[int | None]] = [set() for _ in names]
    for line in reply.splitlines():
        match = _JOINT_LINE.match(line.strip(_WRAPPERS))
        if not match:
            continue
        key = _norm(match.group("name"))
        if key in keys:
            k = keys.index(key)
            found[k].add(parse_letter(match.group("rest"), options[k]))
    return [next(iter(f)) if len(f) == 1 else None for f in found]
