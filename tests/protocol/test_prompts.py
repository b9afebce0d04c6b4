"""The exact prompt text shared by evaluation and LoRA tuning, and the seeded option order."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hiertrain.base.errors import HierError
from hiertrain.protocol.prompts import (
    ANSWER_INSTRUCTION,
    SYSTEM_IMAGE,
    SYSTEM_TEXT,
    asked_levels,
    chat_messages,
    image_prompt,
    question_text,
    shuffled_options,
    text_prompt,
)

# Copied by hand from the paper's evaluation scripts (evaluation/vllm/qwen/eval_CUB.py and
# evaluation/llm/qwen/eval_text_cub.py), CUB-200 genus level.
PAPER_IMAGE_GENUS_BIRD = [
    "Based on taxonomy, what is the genus of the bird in this image?",
    "Based on the image, what is the taxonomic classification at the genus level?",
    "What is the taxonomic classification of the bird in this image?",
    "How can the bird in this image be categorized taxonomically?",
    "What is the systematic position of the bird shown in the image?",
]
PAPER_TEXT_FAMILY = [
    "Based on taxonomy, where does Laysan Albatross fall in terms of family?",
    "Given the Laysan Albatross, what is its taxonomic classification at the family level?",
    "What could Laysan Albatross be classified as?",
    "How can Laysan Albatross be taxonomically categorized?",
    "What is the systematic position of Laysan Albatross in the biological classification hierarchy?",
]


@pytest.mark.parametrize("variant", range(5))
def test_image_prompts_match_the_paper(variant):
    assert image_prompt(variant, "genus", "bird") == PAPER_IMAGE_GENUS_BIRD[variant]


@pytest.mark.parametrize("variant", range(5))
def test_text_prompts_match_the_paper(variant):
    assert text_prompt(variant, "family", "Laysan Albatross") == PAPER_TEXT_FAMILY[variant]


def test_default_subject_is_object():
    assert image_prompt(0, "order") == "Based on taxonomy, what is the order of the object in this image?"


@pytest.mark.parametrize("variant", [-1, 5])
def test_unknown_variant_is_a_hier_error(variant):
    with pytest.raises(HierError, match="variant"):
        image_prompt(variant, "order", "bird")
    with pytest.raises(HierError, match="variant"):
        text_prompt(variant, "order", "Laysan Albatross")


def test_system_prompts_and_instruction_are_the_papers():
    assert SYSTEM_IMAGE == (
        "You are an expert in hierarchical image classification. Given an image, classify it at its "
        "current hierarchy level by selecting the most appropriate option from the provided choices "
        "(labeled with letters). Respond with only the corresponding letter."
    )
    assert SYSTEM_TEXT == "You are a helpful assistant."
    assert ANSWER_INSTRUCTION == "Answer with the option's letter from the given choices directly."


def test_question_text_layout():
    text = question_text("What is it?", ["Diomedeidae", "Laridae", "Alcidae"])
    assert text == (
        "What is it?\nA. Diomedeidae\nB. Laridae\nC. Alcidae\n"
        "Answer with the option's letter from the given choices directly."
    )


def test_question_text_rejects_no_options_and_too_many():
    with pytest.raises(HierError):
        question_text("What is it?", [])
    with pytest.raises(HierError, match="11 options"):
        question_text("What is it?", [f"o{i}" for i in range(11)])


def test_chat_messages_image_and_text():
    assert chat_messages("Q", "image") == [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_IMAGE}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]},
    ]
    assert chat_messages("Q", "text") == [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_TEXT}]},
        {"role": "user", "content": [{"type": "text", "text": "Q"}]},
    ]
    with pytest.raises(HierError, match="mode"):
        chat_messages("Q", "video")


def test_text_mode_does_not_ask_the_leaf():
    truths = ["Aves", "Diomedeidae", "Phoebastria", "Laysan Albatross"]
    assert asked_levels(truths, "image") == [0, 1, 2, 3]
    assert asked_levels(truths, "text") == [0, 1, 2]
    # A level missing from a record (null truth) is never asked; the leaf is the deepest present.
    assert asked_levels(["a", None, "c", None], "image") == [0, 2]
    assert asked_levels(["a", None, "c", None], "text") == [0]


OPTIONS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


def test_shuffle_is_a_deterministic_permutation():
    first = shuffled_options(OPTIONS, seed=3, sample_id=17, level=2)
    assert sorted(first) == sorted(OPTIONS)
    assert shuffled_options(OPTIONS, seed=3, sample_id=17, level=2) == first
    assert OPTIONS == ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]  # not mutated


def test_shuffle_differs_across_levels_samples_and_seeds():
    by_level = {tuple(shuffled_options(OPTIONS, 0, 5, level)) for level in range(6)}
    by_sample = {tuple(shuffled_options(OPTIONS, 0, sample, 1)) for sample in range(6)}
    by_seed = {tuple(shuffled_options(OPTIONS, seed, 5, 1)) for seed in range(6)}
    # 8! orders: six draws colliding into one order would mean the key is ignored.
    assert len(by_level) > 1 and len(by_sample) > 1 and len(by_seed) > 1


def test_shuffle_is_the_same_in_every_process():
    """Python's hash() is salted per process; the order must not depend on it."""
    code = "from hiertrain.protocol.prompts import shuffled_options as s; print(s(list('abcdefgh'), 1, 2, 3))"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], env={"PYTHONHASHSEED": salt}, capture_output=True, text=True, check=True
        ).stdout
        for salt in ("1", "2", "3")
    }
    assert len(outs) == 1
    assert outs.pop().strip() == repr(shuffled_options(list("abcdefgh"), 1, 2, 3))


# Every family's 5 image and 5 text wordings, as the paper's Qwen2.5-VL scripts have them
# (evaluation/vllm/qwen/eval_{CUB,natural_plant,natural_animal,animal,artifact,food}.py and
# evaluation/llm/qwen/eval_text_{cub,natural,animal,artifact}.py at commit c86f23af), rendered for
# one level. Keys: (family, subject, level name).
PAPER_IMAGE = {
    ("cub", "bird", "order"): [
        "Based on taxonomy, what is the order of the bird in this image?",
        "Based on the image, what is the taxonomic classification at the order level?",
        "What is the taxonomic classification of the bird in this image?",
        "How can the bird in this image be categorized taxonomically?",
        "What is the systematic position of the bird shown in the image?",
    ],
    ("inat", "plant", "phylum"): [
        "Based on taxonomy, where does the plant in the image fall in terms of phylum?",
        "Given the plant in the image, what is its taxonomic classification at the phylum level?",
        "What could the plant in the image be classified as?",
        "How can the plant in the image be taxonomically categorized?",
        "What is the systematic position of the plant in the image in the biological classification hierarchy?",
    ],
    ("inat", "animal", "species"): [
        "Based on taxonomy, where does the animal in the image fall in terms of species?",
        "Given the animal in the image, what is its taxonomic classification at the species level?",
        "What could the animal in the image be classified as?",
        "How can the animal in the image be taxonomically categorized?",
        "What is the systematic position of the animal in the image in the biological classification hierarchy?",
    ],
    ("imagenet_animal", "animal", "depth 3"): [
        "What is the taxonomic category of the animal in this image?",
        "How can the animal in this image be categorized in taxonomy?",
        "Based on classification, what type of animal is this?",
        "What is the hierarchical class of the animal shown here?",
        "Where does this animal belong in the taxonomic hierarchy?",
    ],
    ("imagenet_artifact", "object", "depth 3"): [
        "What is the taxonomic category of the object in this image?",
        "How can the object in this image be categorized in taxonomy?",
        "Based on classification, what type of object is this?",
        "What is the hierarchical class of the object shown here?",
        "Where does this object belong in the taxonomic hierarchy?",
    ],
    ("food", "food", "depth 2"): [
        "What is the taxonomic category of the food item in this image?",
        "How can the food item in this image be categorized in taxonomy?",
        "Based on classification, what type of food is this?",
        "What is the hierarchical class of the food shown here?",
        "Where does this food item belong in the taxonomic hierarchy?",
    ],
}
PAPER_TEXT = {
    ("cub", "Black-footed Albatross", "genus"): [
        "Based on taxonomy, where does Black-footed Albatross fall in terms of genus?",
        "Given the Black-footed Albatross, what is its taxonomic classification at the genus level?",
        "What could Black-footed Albatross be classified as?",
        "How can Black-footed Albatross be taxonomically categorized?",
        "What is the systematic position of Black-footed Albatross in the biological classification hierarchy?",
    ],
    ("inat", "Oenothera curtiflora", "class"): [
        "Based on taxonomy, where does Oenothera curtiflora fall in terms of class?",
        "Given the Oenothera curtiflora, what is its taxonomic classification at the class level?",
        "What could Oenothera curtiflora be classified as?",
        "How can Oenothera curtiflora be taxonomically categorized?",
        "What is the systematic position of Oenothera curtiflora in the biological classification hierarchy?",
    ],
    ("imagenet_animal", "goldfish", "depth 4"): [
        "Given the goldfish, what is its taxonomic classification?",
        "Based on taxonomy, where does goldfish fall?",
        "What could goldfish be classified as?",
        "How can goldfish be taxonomically categorized?",
        "What is the systematic position of goldfish in the biological classification hierarchy?",
    ],
    ("imagenet_artifact", "banjo", "depth 4"): [
        "Given the banjo, what is its taxonomic classification?",
        "Based on taxonomy, where does banjo fall?",
        "What could banjo be classified as?",
        "How can banjo be taxonomically categorized?",
        "What is the categorical classification of banjo in the artifact taxonomy?",
    ],
}


@pytest.mark.parametrize("key", list(PAPER_IMAGE), ids=lambda k: f"{k[0]}-{k[1]}")
def test_every_family_image_wording_is_the_papers(key):
    family, subject, level = key
    assert [image_prompt(v, level, subject, family) for v in range(5)] == PAPER_IMAGE[key]


@pytest.mark.parametrize("key", list(PAPER_TEXT), ids=lambda k: k[0])
def test_every_family_text_wording_is_the_papers(key):
    family, label, level = key
    assert [text_prompt(v, level, label, family) for v in range(5)] == PAPER_TEXT[key]


def test_every_family_is_pinned_and_food_has_no_text_wording():
    from hiertrain.protocol.prompts import PAPER_FAMILIES as PROMPT_FAMILIES

    assert set(PROMPT_FAMILIES) == {k[0] for k in PAPER_IMAGE}
    assert set(PROMPT_FAMILIES) - {k[0] for k in PAPER_TEXT} == {"food"}
    with pytest.raises(HierError, match="food.*no text-mode wording"):
        text_prompt(0, "depth 2", "pizza", "food")
    with pytest.raises(HierError, match="unknown prompt_family 'birds'"):
        image_prompt(0, "order", "bird", "birds")


def test_system_prompt_policies():
    from hiertrain.base.errors import HierError
    from hiertrain.protocol.prompts import SYSTEM_IMAGE, chat_messages, raw_prompt, with_system_prompt

    msgs = chat_messages("Q?", "image")
    assert with_system_prompt(msgs, "paper") is msgs and msgs[0]["content"][0]["text"] == SYSTEM_IMAGE
    assert with_system_prompt(msgs, "none") == msgs[1:]
    assert with_system_prompt(msgs, "model_default", None) == msgs[1:]  # the chat template's own default applies
    assert with_system_prompt(msgs, "model_default", "Sys.")[0]["content"][0]["text"] == "Sys."
    custom = with_system_prompt(msgs, "You are a botanist.")
    assert custom[0]["content"][0]["text"] == "You are a botanist." and custom[1:] == msgs[1:]
    for bad in ("Paper", "model-default", "", "  "):
        with pytest.raises(HierError, match="system_prompt"):
            with_system_prompt(msgs, bad)
    assert raw_prompt("Q?\nA. x") == "Q?\nA. x Answer:"
