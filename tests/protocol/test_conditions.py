"""The question conditions' exact strings (quoted from the paper's scripts at c86f23af), binary
scoring as utils/metric_binary.py does it, and the CoT final-letter rule."""

from __future__ import annotations

import pytest

from hiertrain.protocol import conditions
from hiertrain.base.errors import HierError


def test_exact_strings_of_the_papers_scripts():
    # eval_CUB_tax_qwen.py
    assert conditions.TAXONOMY_SYSTEM == "You are a helpful assistant. Here is a taxonomy: "
    # cot/qwen/*: U+2019; cot/internvl/*, cot/llava/*: ASCII
    assert conditions.COT_PREFIX["typographic"] == "Let\u2019s think step by step. "
    assert conditions.COT_PREFIX["ascii"] == "Let's think step by step. "
    # eval_CUB_binary.py
    assert conditions.BINARY_SYSTEM == (
        "You are an expert in hierarchical image classification. Given an image and a corresponding statement, "
        "determine whether the statement accurately reflects the content of the image. Respond with a single word: Yes or No."
    )
    assert conditions.binary_question(conditions.binary_statement("bird", "order", "procellariiformes")) == (
        "The bird in the image belongs to the order procellariiformes.\nIs this statement correct? Please answer Yes or No."
    )
    # bio_cot/eval_{animal,plant}_bio.py: lengths, ends and the one example each
    assert len(conditions.BIO_COT_SYSTEM["animal"]) == 809 and len(conditions.BIO_COT_SYSTEM["plant"]) == 820
    assert conditions.BIO_COT_SYSTEM["plant"].endswith(
        "A. Chlorophyta\nB. Bryophyta\nC. Rhodophyta\nD. Tracheophyta\nYou should select option **D**, labeled with *Tracheophyta*."
    )
    assert "*Caenurgina crassiuscula*, then the correct genus is *Caenurgina*, family is *Erebidae*" in conditions.BIO_COT_SYSTEM["animal"]
    assert conditions.BIO_COT_SYSTEM["animal"].startswith(
        "You are an expert in hierarchical image classification. Given an image and a multiple-choice question about a "
        "specific taxonomy level (e.g., genus, family), first infer the most likely species from the image, then reason "
        "step-by-step through the taxonomy hierarchy to identify the correct label. Respond with only the letter "
        "corresponding to the correct answer.\nExample: if the image depicts "
    )


def test_question_layouts_per_condition():
    options = ["procellariiformes", "apodiformes"]
    prompt = "Based on taxonomy, what is the order of the bird in this image?"
    answer = "Answer with the option's letter from the given choices directly."
    assert conditions.closed_question(prompt, options, "taxonomy") == (
        prompt + "\nA. procellariiformes\nB. apodiformes" + answer  # the Qwen taxonomy script: no newline
    )
    assert conditions.closed_question(prompt, options, "cot") == (
        prompt + "\nA. procellariiformes\nB. apodiformes\nLet’s think step by step. " + answer
    )
    assert conditions.closed_question(prompt, options, "cot", "ascii").endswith("\nLet's think step by step. " + answer)
    assert conditions.closed_question(prompt, options, "bio_cot") == prompt + "\nA. procellariiformes\nB. apodiformes\n" + answer
    assert conditions.open_question(prompt) == prompt + "\nAnswer with the name only."


def test_taxonomy_is_rendered_as_the_papers_str_of_the_json():
    text = conditions.taxonomy_context("hiertrain://taxonomies/hierarchy_CUB200.json")
    assert len(text) == 17137
    assert text.startswith("{'Black-footed Albatross': ['Procellariiformes', 'Diomedeidae', 'Phoebastria', 'Black-footed Albatross'], 'Laysan Albatross': [")
    assert text.endswith("'Common Yellowthroat': ['Passeriformes', 'Parulidae', 'Geothlypis', 'Common Yellowthroat']}")
    assert conditions.system_prompt("taxonomy", "image", context=text) == "You are a helpful assistant. Here is a taxonomy: " + text


def test_binary_scoring_is_metric_binary_by_hand():
    # the paper: reply .strip().lower(); "y..." = 1, "n..." = 0, else -1
    assert [conditions.binary_value(r) for r in (" Yes.", "no", "YES", "Maybe", "", "nope")] == [1, 0, 1, -1, -1, 0]
    # one image, options in letter order, truth = "c"; the level's prediction is the first "Yes"
    options, truth = ["a", "b", "c", "d"], "c"
    cases = {
        ("No", "No", "Yes", "No"): ("c", True),  # only the truth said yes
        ("No", "Yes", "Yes", "No"): ("b", False),  # an earlier-lettered distractor said yes first
        ("No", "No", "No", "No"): (None, False),  # no yes at all
        ("Unsure", "No", "Yes", "Yes"): ("c", True),  # -1 and later yeses do not count
    }
    for replies, (expected, correct) in cases.items():
        index = conditions.binary_choice([conditions.binary_value(r) for r in replies])
        predicted = None if index is None else options[index]
        assert predicted == expected
        assert (predicted == truth) is correct


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("B", 1),
        ("C. diomedeidae", 2),
        ("First, the beak is hooked. The bird is a seabird.\nThe answer is B.", 1),
        ("Looking at A and D: the wings are long. Final answer: (D)", 3),
        ("The order is not A.\nAnswer: C\nbecause ...", 2),
        ("Let's think: option A seems unlikely, so the answer is **C**", 2),
        ("The wings are long.\nD", 3),
        ("It is a seabird with long wings", None),  # no letter: unparseable
        ("The answer is F", None),  # a letter beyond the options
    ],
)
def test_cot_final_letter(reply, expected):
    assert conditions.final_letter(reply, ["procellariiformes", "apodiformes", "diomedeidae", "pelecaniformes"]) == expected


def test_bad_condition_settings_are_one_line_errors():
    with pytest.raises(HierError, match="unknown condition 'maybe'"):
        conditions.check_condition("maybe", "image")
    with pytest.raises(HierError, match="image-only"):
        conditions.check_condition("binary", "text")
    with pytest.raises(HierError, match="bio_cot"):
        conditions.check_condition("bio_cot", "image", "bird")
    with pytest.raises(HierError, match="cot_apostrophe"):
        conditions.check_condition("cot", "image", cot_apostrophe="curly")
    conditions.check_condition("cot", "text")
    conditions.check_condition("open", "text")


def test_registry_holds_the_six_conditions_in_order():
    assert tuple(conditions.REGISTRY) == ("plain", "taxonomy", "cot", "bio_cot", "binary", "open")
    assert conditions.CONDITIONS == tuple(conditions.REGISTRY)
    assert conditions.GENERATE_ONLY == ("cot", "binary", "open")
    assert conditions.IMAGE_ONLY == ("bio_cot", "binary")
    assert all(conditions.condition_of(name).name == name for name in conditions.REGISTRY)


def test_unknown_condition_is_one_line_listing_the_known_names():
    with pytest.raises(HierError) as err:
        conditions.condition_of("maybe")
    assert str(err.value) == "unknown condition 'maybe' (use one of plain, taxonomy, cot, bio_cot, binary, open)"


def test_register_refuses_a_taken_or_missing_name():
    class Again(conditions.Condition):
        name = "plain"

    class Nameless(conditions.Condition):
        pass

    for cls in (Again, Nameless):
        with pytest.raises(HierError, match="needs a new name"):
            conditions.register(cls)
    assert conditions.REGISTRY["plain"].__class__ is conditions.Plain


def test_each_condition_reads_replies_its_way():
    options = ["procellariiformes", "apodiformes", "diomedeidae"]
    reasoning = "It has long wings.\nThe answer is C."
    assert conditions.condition_of("plain").read("B", options) == 1
    assert conditions.condition_of("plain").read(reasoning, options) is None  # strict: not a direct answer
    assert conditions.condition_of("cot").read(reasoning, options) == 2  # its final letter
    assert conditions.condition_of("bio_cot").read(reasoning, options) == 2
    assert conditions.condition_of("cot").read("I think A, no, C", options, parser="paper") == 0  # first letter anywhere


def test_closed_layouts_equal_the_plain_question_text():
    from hiertrain.protocol.prompts import question_text

    prompt, options = "What is its order?", ["a", "b"]
    assert conditions.closed_question(prompt, options, "plain") == question_text(prompt, options)
    assert conditions.condition_of("open").question(prompt, []) == conditions.open_question(prompt)
    assert conditions.condition_of("binary").statements("bird", "order", options) == [
        conditions.binary_question(conditions.binary_statement("bird", "order", item)) for item in options
    ]
    assert conditions.condition_of("plain").statements("bird", "order", options) is None


def test_constraints_live_on_the_classes():
    with pytest.raises(HierError, match="plain condition only"):
        conditions.check_inference("joint", "cot", False)
    with pytest.raises(HierError, match="condition 'open' has none"):
        conditions.check_inference("independent", "open", True)
    conditions.check_inference("joint", "plain", False)
    with pytest.raises(HierError, match="names the level"):  # cub variant 3 does not say which level
        conditions.condition_of("open").check_wording("image", "cub", 3)
    conditions.condition_of("open").check_wording("image", "cub", 0)
    conditions.condition_of("plain").check_wording("image", "cub", 3)
    assert [n for n, c in conditions.REGISTRY.items() if c.raw_prompt] == ["plain"]
    assert [n for n, c in conditions.REGISTRY.items() if c.run_wide_prefix] == ["taxonomy"]
    assert [n for n, c in conditions.REGISTRY.items() if c.open_set] == ["open"]

