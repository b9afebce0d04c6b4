"""HierVQADataModule: one item per image with all its levels; bad input fails with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hiertrain.protocol import prompts
from hiertrain.protocol.protocol import QuestionProtocol
from hiertrain.datamodules.questions import HierVQADataModule, level_questions
from hiertrain.base.errors import HierError
from hiertrain.taxonomy.question_bank import read_questions

RECORD = {
    "image": "img/a.png", "label": "Red Solid Circle", "split": "test",
    "level1": "round", "choices_level1": ["round", "angular"],
    "level2": "circle", "choices_level2": ["circle", "square", "triangle", "ellipse"],
    "level3": "red solid circle", "choices_level3": ["red solid circle", "blue solid circle", "red dotted circle"],
}  # fmt: skip


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _image(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (255, 0, 0)).save(path)


def test_level_questions_image_and_text(tmp_path):
    record = read_questions(_write(tmp_path / "q.jsonl", [RECORD]))[0]
    names = ["family", "shape", "species"]
    image = level_questions(record, QuestionProtocol("image", names, "shape", variant=0, seed=3))
    assert [q.level for q in image] == [0, 1, 2]
    assert image[1].question.startswith("Based on taxonomy, what is the shape of the shape in this image?\nA. ")
    assert sorted(image[1].options) == sorted(RECORD["choices_level2"])
    assert image[1].options == prompts.shuffled_options(RECORD["choices_level2"], 3, 0, 1)
    assert image[0].messages[1]["content"][0] == {"type": "image"}
    text = level_questions(record, QuestionProtocol("text", names, variant=1, seed=3))
    assert [q.level for q in text] == [0, 1]  # the leaf is named in the question, so not asked
    assert "Given the Red Solid Circle, what is its taxonomic classification at the shape level?" in text[1].question


def test_items_default_names_limit_and_padding(tmp_path):
    records = [dict(RECORD, image=f"img/{i}.png") for i in range(5)]
    for i in range(5):
        _image(tmp_path / f"img/{i}.png")
    dm = HierVQADataModule(str(_write(tmp_path / "q.jsonl", records)), limit=3, seed=1)
    dm.setup("test")
    assert dm.level_names == ["depth 1", "depth 2", "depth 3"]
    dataset = dm.dataset()
    assert len(dataset) == 3
    item = dataset[1]
    assert item["sample_id"] == 1 and item["valid"] and item["error"] is None
    assert item["image"].size == (32, 32) and len(item["levels"]) == 3
    padded = dataset[len(dataset) + 1]  # a PaddedEvalSampler repeat
    assert padded["sample_id"] == 1 and not padded["valid"]
    dm.exclude_ids = {0, 2}
    assert [r.sample_id for r in dm.dataset().records] == [1]
    assert len(list(dm.test_dataloader())) == 1


def test_taxonomy_gives_level_names_and_checks_labels(tmp_path):
    taxonomy = tmp_path / "tax.json"
    taxonomy.write_text(json.dumps({"red solid circle": ["round", "circle", "red solid circle"],
                                    "blue square": ["angular", "square", "blue square"]}))  # fmt: skip
    (tmp_path / "tax.levels.json").write_text(json.dumps(["family", "shape", "species"]))
    dm = HierVQADataModule(str(_write(tmp_path / "q.jsonl", [RECORD])), taxonomy=str(taxonomy))
    dm.setup()  # "Red Solid Circle" matches "red solid circle" after normalisation
    assert dm.level_names == ["family", "shape", "species"]
    bad = dict(RECORD, label="Green Star", image="img/bad.png")
    dm = HierVQADataModule(str(_write(tmp_path / "bad.jsonl", [RECORD, bad])), taxonomy=str(taxonomy))
    with pytest.raises(HierError, match=r"bad\.jsonl:2: label 'Green Star' is not in taxonomy"):
        dm.setup()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"level2": "hexagon"}, r"q\.jsonl:1: 'level2' truth 'hexagon' is not among"),
        ({"choices_level1": ["round", "round"]}, r"q\.jsonl:1: 'choices_level1' repeats an option"),
    ],
)
def test_bad_records_are_errors(tmp_path, change, message):
    dm = HierVQADataModule(str(_write(tmp_path / "q.jsonl", [dict(RECORD, **change)])))
    with pytest.raises(HierError, match=message):
        dm.setup()


def test_empty_file_and_bad_options(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(HierError, match="empty.jsonl: no questions"):
        HierVQADataModule(str(empty)).setup()
    with pytest.raises(HierError, match="prompt variant 7"):
        HierVQADataModule(str(_write(tmp_path / "q.jsonl", [RECORD])), prompt_variant=7).setup()
    with pytest.raises(HierError, match="level names"):
        HierVQADataModule(str(_write(tmp_path / "q2.jsonl", [RECORD])), level_names=["a", "b"]).setup()


def test_unreadable_images_skip_or_fail(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    records = [dict(RECORD, image="img/missing.png"), dict(RECORD, image="img/corrupt.png")]
    questions = str(_write(tmp_path / "q.jsonl", records))
    dm = HierVQADataModule(questions)
    missing, corrupt = dm.dataset()[0], dm.dataset()[1]
    assert "img/missing.png: cannot read image of sample 0" in missing["error"]
    assert "img/corrupt.png: cannot read image of sample 1" in corrupt["error"]
    assert missing["image"] is None
    with pytest.raises(HierError, match="corrupt.png: cannot read image of sample 1"):
        HierVQADataModule(questions, on_bad_image="error").dataset()[1]


def test_image_root_map_rebases_absolute_paths(tmp_path):
    _image(tmp_path / "cub/001/a.jpg")
    record = dict(RECORD, image="/authors/CUB/images/001/a.jpg")
    dm = HierVQADataModule(str(_write(tmp_path / "q.jsonl", [record])), image_root_map={"/authors/CUB/images": str(tmp_path / "cub")})
    assert dm.dataset()[0]["error"] is None


def test_cub_question_file_loads_with_its_taxonomy(reference_data):
    dm = HierVQADataModule(
        str(reference_data / "annotations/CUB200_with_random_choice.jsonl"),
        taxonomy=str(reference_data / "taxonomies/hierarchy_CUB200.json"),
        level_names=["order", "family", "genus", "species"],
        subject="bird",
        mode="text",
    )
    dm.setup()
    assert len(dm.served_records()) == 5794 and dm.depth == 4
    item = dm.dataset()[0]
    assert [q.name for q in item["levels"]] == ["order", "family", "genus"]
    assert "where does Black-footed Albatross fall in terms of order?" in item["levels"][0].question


def test_split_serves_only_that_split_and_keeps_sample_ids(tmp_path):
    records = [{**RECORD, "split": split, "image": f"img/{i}.png"} for i, split in enumerate(("train", "test", "val", "test"))]
    path = _write(tmp_path / "q.jsonl", records)
    dm = HierVQADataModule(str(path), split="test")
    assert [r.sample_id for r in dm.served_records()] == [1, 3]
    assert len(HierVQADataModule(str(path)).served_records()) == 4
    with pytest.raises(HierError, match=r"q.jsonl: no records with split 'dev' \(splits found: test, train, val\)$"):
        HierVQADataModule(str(path), split="dev").setup()


def _inat_plant_config(reference_data, questions: Path, **overrides) -> HierVQADataModule:
    """configs/data/inat21_plant.yaml's settings, on `questions` and the shared iNat taxonomy."""
    import yaml

    config = Path(__file__).resolve().parents[2] / "configs/data/inat21_plant.yaml"
    args = yaml.safe_load(config.read_text())["data"]["init_args"]
    args.update(questions=str(questions), taxonomy=str(reference_data / "taxonomies/hierarchy_Inat_plantae.json"))
    args.update(num_workers=0, **overrides)
    return HierVQADataModule(**args)


def _inat_plant_questions(reference_data, tmp_path: Path, drop: bool) -> Path:
    from hiertrain.taxonomy.question_bank import build_questions, write_questions
    from hiertrain.taxonomy.taxonomy import Taxonomy

    taxonomy = Taxonomy.from_json(reference_data / "taxonomies/hierarchy_Inat_plantae.json", drop_trivial_levels=drop)
    images = [{"image": f"img/{i}.jpg", "label": leaf, "split": "test"} for i, leaf in enumerate(taxonomy.leaves[:3])]
    path = tmp_path / f"inat_plant_drop{int(drop)}.jsonl"
    write_questions(build_questions(taxonomy, images), path)
    return path


def test_inat_config_words_questions_the_inat_way(reference_data, tmp_path):
    dm = _inat_plant_config(reference_data, _inat_plant_questions(reference_data, tmp_path, drop=False), mode="image")
    dm.setup()
    assert dm.prompt_family == "inat" and dm.level_names[0] == "kingdom"
    levels = level_questions(dm.served_records()[0], QuestionProtocol("image", dm.level_names, dm.subject, 1, 0, dm.prompt_family))
    assert levels[1].question.startswith(
        "Given the plant in the image, what is its taxonomic classification at the phylum level?\nA. "
    )


def test_dropped_level_drops_its_name(reference_data, tmp_path):
    questions = _inat_plant_questions(reference_data, tmp_path, drop=True)
    dm = _inat_plant_config(reference_data, questions, mode="text", drop_trivial_levels=True)
    dm.setup()
    assert dm.level_names == ["phylum", "class", "order", "family", "genus", "species"]
    item = dm.dataset()[0]
    label = dm.served_records()[0].label
    assert [q.name for q in item["levels"]] == ["phylum", "class", "order", "family", "genus"]
    assert item["levels"][0].question.startswith(f"Based on taxonomy, where does {label} fall in terms of phylum?\n")


def test_level_names_that_do_not_fit_the_levels_are_an_error(reference_data, tmp_path):
    dropped = _inat_plant_questions(reference_data, tmp_path, drop=True)
    with pytest.raises(HierError, match=r"6 levels but the taxonomy's path of .* has 7, named \['kingdom', 'phylum'.*drop_trivial_levels: true") as err:
        _inat_plant_config(reference_data, dropped, mode="text").setup()
    assert "\n" not in str(err.value)
    full = _inat_plant_questions(reference_data, tmp_path, drop=False)
    with pytest.raises(HierError, match=r"7 levels but the taxonomy's path of .* after dropping trivial levels has 6"):
        _inat_plant_config(reference_data, full, mode="text", drop_trivial_levels=True).setup()
    with pytest.raises(HierError, match=r"3 levels but 4 level names were given: \['a', 'b', 'c', 'd'\]"):
        HierVQADataModule(str(_write(tmp_path / "q.jsonl", [RECORD])), level_names=["a", "b", "c", "d"]).setup()


def test_prompt_family_is_checked_at_setup(tmp_path):
    path = _write(tmp_path / "q.jsonl", [RECORD])
    with pytest.raises(HierError, match="unknown prompt_family 'plants'"):
        HierVQADataModule(str(path), prompt_family="plants").setup()
    with pytest.raises(HierError, match="'food' has no text-mode wording"):
        HierVQADataModule(str(path), prompt_family="food", mode="text").setup()
    dm = HierVQADataModule(str(path), prompt_family="imagenet_animal", mode="text")
    assert dm.dataset()[0]["levels"][0].question.startswith("Given the Red Solid Circle, what is its taxonomic classification?\n")


def test_shuffle_options_false_keeps_the_files_order(tmp_path):
    path = _write(tmp_path / "q.jsonl", [RECORD])
    kept = HierVQADataModule(str(path), mode="text", shuffle_options=False).dataset()[0]["levels"]
    assert [q.options for q in kept] == [RECORD["choices_level1"], RECORD["choices_level2"]]
    assert kept[1].question.split("\n")[1:5] == ["A. circle", "B. square", "C. triangle", "D. ellipse"]
    shuffled = HierVQADataModule(str(path), mode="text", seed=1).dataset()[0]["levels"]
    assert sorted(shuffled[1].options) == sorted(RECORD["choices_level2"])


def test_a_few_re_parented_leaves_are_not_a_level_name_error(tmp_path):
    # One record of three is a level short of its taxonomy path (as a leaf under a node that
    # on_multi_parent="first" re-parented): a dropped level would shift them all, this does not.
    taxonomy = tmp_path / "t.json"
    taxonomy.write_text(json.dumps({
        "Red Solid Circle": ["round", "circle", "Red Solid Circle"],
        "Blue Square": ["angular", "square", "Blue Square"],
    }))  # fmt: skip
    short = {"image": "img/b.png", "label": "Blue Square", "split": "test",
             "level1": "square", "choices_level1": ["square", "circle"],
             "level2": "Blue Square", "choices_level2": ["Blue Square", "Red Solid Circle"]}  # fmt: skip
    records = [dict(RECORD, label="Red Solid Circle"), dict(RECORD, label="Red Solid Circle", image="img/c.png"), short]
    dm = HierVQADataModule(str(_write(tmp_path / "q.jsonl", records)), taxonomy=str(taxonomy), level_names=["a", "b", "c"])
    dm.setup()
    assert dm.level_names == ["a", "b", "c"]
    with pytest.raises(HierError, match=r"2 levels but the taxonomy's path of 'Blue Square' has 3.*2 of 3 records differ"):
        HierVQADataModule(str(_write(tmp_path / "q2.jsonl", [short, dict(short, image="img/d.png"), records[0]])), taxonomy=str(taxonomy)).setup()


# ---- issue 11: image-path rule, bad images, bad settings ----------------------------------


def test_image_root_map_relative_target_is_taken_from_the_working_directory(tmp_path, monkeypatch):
    # case 3: the CUB config maps to `data/CUB_200_2011/images`, which must not resolve under the
    # question file's folder (that skipped 100% of images)
    monkeypatch.chdir(tmp_path)
    _image(tmp_path / "data/CUB/images/001/a.jpg")
    record = dict(RECORD, image="/authors/CUB/images/001/a.jpg")
    (tmp_path / "annotations").mkdir()
    questions = _write(tmp_path / "annotations" / "q.jsonl", [record])
    dm = HierVQADataModule(str(questions), image_root_map={"/authors/CUB/images": "data/CUB/images"})
    item = dm.dataset()[0]
    assert item["error"] is None, item["error"]


def test_bomb_and_16bit_images(tmp_path, bomb_png):
    # case 5: a decompression bomb is skipped and named (it killed `test` with a traceback);
    # case 9: 16-bit grey is scaled, not clipped to white
    import numpy as np
    from PIL import Image

    (tmp_path / "img").mkdir()
    bomb_png(tmp_path / "img/bomb.png")
    Image.fromarray((np.linspace(0, 1, 32 * 32).reshape(32, 32) * 65535).astype(np.uint16)).save(tmp_path / "img/g16.png")
    records = [dict(RECORD, image="img/bomb.png"), dict(RECORD, image="img/g16.png")]
    dm = HierVQADataModule(str(_write(tmp_path / "q.jsonl", records)))
    bomb, grey = dm.dataset()[0], dm.dataset()[1]
    assert bomb["image"] is None and "img/bomb.png: cannot read image of sample 0 (DecompressionBombError" in bomb["error"]
    pixels = np.asarray(grey["image"])[..., 0]
    assert grey["error"] is None and (pixels == 255).mean() < 0.01 and pixels.max() >= 250


def test_batch_size_below_one_is_one_line(tmp_path):
    # case 9: `--data.batch_size 0` was a torch traceback
    with pytest.raises(HierError, match=r"^data.batch_size must be at least 1, got 0$"):
        HierVQADataModule(str(_write(tmp_path / "q.jsonl", [RECORD])), batch_size=0)


def test_single_option_question_warns(tmp_path):
    # case 9: a one-option question is always right; it must not be counted silently
    record = dict(RECORD, choices_level1=["round"], image="img/b.png")
    dm = HierVQADataModule(str(_write(tmp_path / "q.jsonl", [RECORD, record])))
    with pytest.warns(UserWarning, match=r"1 questions have a single option .*first: line 2, level 1"):
        dm.setup()


def test_label_case_lower_is_the_papers_llava_text_wording(tmp_path):
    """evaluation/llm/llava/eval_text_cub.py:27 lower-cases the label before wording the question."""
    path = _write(tmp_path / "q.jsonl", [RECORD])
    dm = HierVQADataModule(str(path), mode="text", level_names=["family", "shape", "species"], prompt_variant=1, label_case="lower")
    dm.setup()
    levels = dm.dataset()[0]["levels"]
    assert all(q.question.startswith("Given the red solid circle, what is its") for q in levels)
    default = HierVQADataModule(str(path), mode="text", level_names=["family", "shape", "species"], prompt_variant=1)
    default.setup()
    assert default.dataset()[0]["levels"][0].question.startswith("Given the Red Solid Circle, what is its")
    with pytest.raises(HierError, match="label_case 'upper'"):
        HierVQADataModule(str(path), label_case="upper")


# ---- issue 24: lazy banks ------------------------------------------------------------------


def test_limit_parses_only_the_served_records(tmp_path, monkeypatch):
    # A bank is indexed once; with a limit only the served records are parsed again, and a
    # resume's finished ids leave the loader without parsing anything.
    from hiertrain.taxonomy.bank_index import QuestionIndex

    records = [dict(RECORD, image=f"img/{i}.png", split=("train", "test")[i % 2]) for i in range(40)]
    path = _write(tmp_path / "q.jsonl", records)
    parsed: list[int] = []
    real = QuestionIndex.record
    monkeypatch.setattr(QuestionIndex, "record", lambda self, row, source=None: parsed.append(row) or real(self, row, source))
    dm = HierVQADataModule(str(path), mode="text", split="test", limit=3)
    dm.setup()
    assert parsed == [] and dm.served_ids() == [1, 3, 5] and dm.depth == 3
    dm.exclude_ids = {3}
    items = [item for batch in dm.test_dataloader() for item in batch]
    assert [item["sample_id"] for item in items] == [1, 5] and parsed == [1, 5]
    assert items[1]["record"].raw == records[5]


# ---- inference modes and circular evaluation (issue 26): the exact messages of each mode
MODES_RECORD = dict(
    RECORD, choices_level1=["angular", "round"], choices_level2=["square", "triangle", "circle", "ellipse"],
    choices_level3=["blue solid circle", "red dotted circle", "red solid circle"],
)  # fmt: skip
Q1 = "Based on taxonomy, what is the family of the shape in this image?\nA. angular\nB. round\nAnswer with the option's letter from the given choices directly."
Q2 = ("Based on taxonomy, what is the shape of the shape in this image?\nA. square\nB. triangle\nC. circle\nD. ellipse\n"
      "Answer with the option's letter from the given choices directly.")  # fmt: skip
Q3 = ("Based on taxonomy, what is the species of the shape in this image?\nA. blue solid circle\nB. red dotted circle\n"
      "C. red solid circle\nAnswer with the option's letter from the given choices directly.")  # fmt: skip
SYSTEM = {"role": "system", "content": [{"type": "text", "text": prompts.SYSTEM_IMAGE}]}


def _modes(tmp_path, **kwargs):
    record = read_questions(_write(tmp_path / "q.jsonl", [MODES_RECORD]))[0]
    return level_questions(record, QuestionProtocol("image", ["family", "shape", "species"], "shape", shuffle=False, **kwargs))


def test_independent_and_stepwise_prompts_are_todays(tmp_path):
    today = _modes(tmp_path)
    for inference in ("independent", "stepwise"):
        same = _modes(tmp_path, inference=inference)
        assert [(q.question, q.messages, q.options) for q in same] == [(q.question, q.messages, q.options) for q in today]
    assert [q.question for q in today] == [Q1, Q2, Q3]
    assert today[2].messages == [SYSTEM, {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": Q3}]}]


def test_oracle_parent_asks_after_the_true_answers_as_chat_turns(tmp_path):
    levels = _modes(tmp_path, inference="oracle_parent")
    user1 = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": Q1}]}
    assert levels[0].messages == [SYSTEM, user1]
    assert levels[2].messages == [
        SYSTEM, user1,
        {"role": "assistant", "content": [{"type": "text", "text": "B"}]},  # "round" is B
        {"role": "user", "content": [{"type": "text", "text": Q2}]},
        {"role": "assistant", "content": [{"type": "text", "text": "C"}]},  # "circle" is C
        {"role": "user", "content": [{"type": "text", "text": Q3}]},
    ]  # fmt: skip
    assert [q.question for q in levels] == [Q1, Q2, Q3]  # the prediction's `question`: the level's own


def test_joint_asks_every_level_in_one_question(tmp_path):
    levels = _modes(tmp_path, inference="joint")
    joint = (
        "family: Based on taxonomy, what is the family of the shape in this image?\nA. angular\nB. round\n\n"
        "shape: Based on taxonomy, what is the shape of the shape in this image?\nA. square\nB. triangle\nC. circle\nD. ellipse\n\n"
        "species: Based on taxonomy, what is the species of the shape in this image?\nA. blue solid circle\n"
        "B. red dotted circle\nC. red solid circle\n\n"
        "Answer with one line per level, in the order asked: the level's name, a colon and the option's letter from "
        "that level's choices."
    )
    system = (
        "You are an expert in hierarchical image classification. Given an image, classify it at every hierarchy level "
        "asked by selecting the most appropriate option of each level from its choices (labeled with letters). Respond "
        "with one line per level: the level's name, a colon and the corresponding letter."
    )
    assert all(q.question == joint for q in levels)
    assert levels[0].messages == [
        {"role": "system", "content": [{"type": "text", "text": system}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": joint}]},
    ]
    assert [q.options for q in levels] == [MODES_RECORD["choices_level1"], MODES_RECORD["choices_level2"], MODES_RECORD["choices_level3"]]


def test_circular_levels_carry_every_other_rotation(tmp_path):
    levels = _modes(tmp_path, circular=True)
    assert [r.options for r in levels[1].rotations] == [
        ["triangle", "circle", "ellipse", "square"], ["circle", "ellipse", "square", "triangle"], ["ellipse", "square", "triangle", "circle"]
    ]
    assert levels[0].rotations[0].question == Q1.replace("A. angular\nB. round", "A. round\nB. angular")
    assert levels[0].question == Q1  # rotation 0 is the plain question
    oracle = _modes(tmp_path, circular=True, inference="oracle_parent")
    assert oracle[1].rotations[0].messages[:3] == oracle[1].messages[:3]  # the same earlier turns
    assert oracle[1].rotations[0].messages[-1]["content"][0]["text"] == levels[1].rotations[0].question


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"inference": "beam"}, "inference 'beam' is not one of"),
        ({"inference": "joint", "condition": "cot"}, "plain condition only"),
        ({"circular": True, "inference": "stepwise"}, "circular evaluation is asked as extra suffixes"),
        ({"circular": True, "condition": "open", "taxonomy": "t.json"}, "has none"),
    ],
)
def test_bad_mode_settings_are_one_line_errors(tmp_path, kwargs, match):
    with pytest.raises(HierError, match=match):
        HierVQADataModule(str(tmp_path / "q.jsonl"), **kwargs)


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([RECORD, RECORD], r"q\.jsonl:2: record 'img/a\.png' repeats line 1"),
        ([dict(RECORD, choices_level2=["circle", "Circle ", "square"])], r"q\.jsonl:1: 'choices_level2' repeats an option after normalisation"),
        ([dict(RECORD, image="")], r"q\.jsonl:1: empty 'image' field"),
    ],
)
def test_the_evaluation_data_refuses_what_data_check_counts(tmp_path, records, message):
    """Issue 22 item 18: no sample scored twice, no look-alike options asked, no folder opened as an image."""
    dm = HierVQADataModule(str(_write(tmp_path / "q.jsonl", records)))
    with pytest.raises(HierError, match=message):
        dm.setup()
