"""Reading the chosen option from a reply: our strict parser and the paper's rule."""

from __future__ import annotations

import pytest

from hiertrain.protocol.answers import paper_letter, parse_letter

OPTIONS = ["Rosaceae", "Fabaceae", "Poaceae", "Asteraceae"]


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("B", 1),
        ("B.", 1),
        ("B)", 1),
        (" b", 1),
        ("b.", 1),
        ("(B)", 1),
        ("(c)", 2),
        ("[D]", 3),
        ("A", 0),
        ("A\n", 0),
        ("D. Asteraceae", 3),
        ("D) Asteraceae", 3),
        ("D\nBecause the flower head is composite.", 3),
        ("C: Poaceae", 2),
        ("Answer: C", 2),
        ("answer: c", 2),
        ("Answer: (C)", 2),
        ("The answer is C", 2),
        ("The answer is C.", 2),
        ("The correct answer is D. Asteraceae", 3),
        ("Option B", 1),
        ("**B**", 1),
        ("'C'", 2),
        ("Asteraceae", 3),
        ("asteraceae.", 3),
        ("  POACEAE  ", 2),
        ("Answer: Fabaceae", 1),
        ("D Asteraceae", 3),  # a letter then exactly that option's text
    ],
)
def test_parse_letter_reads_clear_answers(reply, expected):
    assert parse_letter(reply, OPTIONS) == expected


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "   ",
        "E",  # no fifth option
        "(F)",
        "A bird of the daisy family",  # the article "A", not option A
        "D Rosaceae",  # letter and text disagree without punctuation between them: ambiguous
        "I think it is B",
        "Asteraceae or Poaceae",
        "Compositae",
        "The image shows a sunflower.",
        "BC",
    ],
)
def test_parse_letter_leaves_the_rest_unparseable(reply):
    assert parse_letter(reply, OPTIONS) is None


def test_letter_wins_over_disagreeing_text():
    # The prompt asks for the letter; "B. Asteraceae" chose B even though D is Asteraceae.
    assert parse_letter("B. Asteraceae", OPTIONS) == 1


def test_option_text_is_matched_after_normalisation():
    options = ["black-footed albatross", "Laysan Albatross", "sooty_albatross"]
    assert parse_letter("Black footed Albatross", options) == 0
    assert parse_letter("Sooty Albatross.", options) == 2


def test_fewer_options_limit_the_letters():
    assert parse_letter("B", ["x", "y"]) == 1
    assert parse_letter("C", ["x", "y"]) is None


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("D. Asteraceae", 0),  # contains "A", checked before "D": the paper's scripts read A here
        ("B", 1),
        ("The answer is C", 2),  # no capital A or B in the reply
        ("Answer: C", 0),  # the capital A of "Answer"
        ("d", None),  # case-sensitive
        ("none", None),
    ],
)
def test_paper_letter_reproduces_the_papers_rule(reply, expected):
    assert paper_letter(reply, 4) == expected


def test_paper_letter_only_looks_at_n_letters():
    assert paper_letter("E", 4) is None
    assert paper_letter("E", 5) == 4


def test_the_two_rules_disagree_where_the_paper_misreads():
    reply = "D. Asteraceae"
    assert (parse_letter(reply, OPTIONS), paper_letter(reply, len(OPTIONS))) == (3, 0)


def test_joint_reply_is_read_line_by_line():
    from hiertrain.protocol.answers import joint_letters

    names, options = ["order", "family", "genus"], [["a", "b"], ["c", "d", "e"], ["f", "g"]]
    assert joint_letters("order: B\n**Family**: C.\ngenus: (A)", names, options) == [1, 2, 0]
    assert joint_letters("order: B\nfamily: E\n", names, options) == [1, None, None]  # E is no option; genus missing
    assert joint_letters("order: A\norder: B\ngenus: B", names, options) == [None, None, 1]  # two answers disagree
    assert joint_letters("B\nC\nA", names, options) == [None, None, None]  # no level named: unparseable
