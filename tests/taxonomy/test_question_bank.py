"""Question bank records: the paper's files round-trip, building with random and similar
distractors, and one-line errors for bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from hiertrain.cli.main import main
from hiertrain.base.errors import HierError
from hiertrain.taxonomy.question_bank import (
    QuestionRecord,
    build_questions,
    level_keys,
    read_image_list,
    read_questions,
    write_questions,
)
from hiertrain.taxonomy.distractors import TextEmbeddingCache
from hiertrain.taxonomy.taxonomy import Taxonomy

HIERTRAIN = Path(sys.executable).with_name("hiertrain")
CUB_FILES = ["CUB200_with_random_choice.jsonl", "CUB200_with_similar_choice.jsonl"]

# Level 1 has 2 classes, level 2 has 3, level 3 (the leaves) 6.
SMALL = {
    "robin": ["Bird", "Songbird", "robin"],
    "wren": ["Bird", "Songbird", "wren"],
    "gull": ["Bird", "Seabird", "gull"],
    "tern": ["Bird", "Seabird", "tern"],
    "trout": ["Fish", "Bony fish", "trout"],
    "salmon": ["Fish", "Bony fish", "salmon"],
}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def image_list(labels: list[str], split: str = "test") -> list[dict]:
    return [{"image": f"img/{i}.png", "label": label, "split": split} for i, label in enumerate(labels)]


# ---- the paper's files ------------------------------------------------------------------


@pytest.mark.parametrize("name", CUB_FILES)
def test_shipped_cub_file_round_trips_byte_identical(reference_data, tmp_path, name):
    source = reference_data / "annotations" / name
    records = read_questions(source)
    assert len(records) == 5794
    assert [r.sample_id for r in records[:3]] == [0, 1, 2]
    out = tmp_path / name
    write_questions(records, out)
    assert out.read_bytes() == source.read_bytes()


def test_shipped_record_fields(reference_data):
    first = read_questions(reference_data / "annotations" / CUB_FILES[0])[0]
    assert first.label == "Black-footed Albatross"
    assert first.split == "test"
    assert first.image.endswith("Black_Footed_Albatross_0001_796111.jpg")
    assert first.truths == ["procellariiformes", "diomedeidae", "phoebastria", "black-footed albatross"]
    assert first.choices[0] == ["podicipediformes", "anseriformes", "procellariiformes", "apodiformes"]
    assert first.choices[3] == ["cliff swallow", "red-cockaded woodpecker", "black-footed albatross", "white pelican"]


def test_built_cub_bank_matches_the_shipped_truths(reference_data):
    """Our builder on CUB gives the paper's truth at every level (up to their lower-casing)."""
    shipped = read_questions(reference_data / "annotations" / CUB_FILES[0])[::97]
    taxonomy = Taxonomy.from_json(reference_data / "taxonomies" / "hierarchy_CUB200.json")
    built = build_questions(taxonomy, [r.raw for r in shipped], seed=0)
    for ours, theirs in zip(built, shipped):
        assert [t.lower() for t in ours.truths] == theirs.truths
        assert all(len(c) == 4 for c in ours.choices)


# ---- level keys and record properties ---------------------------------------------------


def test_level_keys_sort_numerically():
    d = {f"level{n}": f"n{n}" for n in (10, 2, 9, 1, 11)} | {"choices_level3": [], "levels": 1, "level0x": 0}
    assert level_keys(d) == ["level1", "level2", "level9", "level10", "level11"]


def test_truths_and_choices_by_level_index():
    raw = {"image": "x", "label": "l", "split": "test"}
    for n in range(1, 12):
        raw[f"level{n}"] = f"t{n}"
        raw[f"choices_level{n}"] = [f"t{n}", f"o{n}"]
    record = QuestionRecord(raw=raw, sample_id=0)
    assert record.truths == [f"t{n}" for n in range(1, 12)]
    assert record.choices[9] == ["t10", "o10"]


def test_missing_middle_level_is_none():
    raw = {"image": "x", "label": "l", "split": "s", "level1": "a", "choices_level1": ["a"],
           "level3": "c", "choices_level3": ["c", "d"]}
    record = QuestionRecord(raw=raw, sample_id=0)
    assert record.truths == ["a", None, "c"]
    assert record.choices == [["a"], [], ["c", "d"]]


# ---- bad question files -----------------------------------------------------------------

GOOD = {"image": "a.jpg", "label": "robin", "split": "test", "level1": "Bird", "choices_level1": ["Fish", "Bird"]}


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("{not json", "not valid JSON"),
        ("", "blank line"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "label"}), "missing key 'label'"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "choices_level1"}), "missing key 'choices_level1'"),
        (json.dumps(GOOD | {"level1": "Reptile"}), "'Reptile' is not among 'choices_level1'"),
        (json.dumps(GOOD | {"choices_level1": ["Bird", "Bird"]}), "repeats an option"),
        (json.dumps(GOOD | {"choices_level1": "Bird"}), "non-empty list of strings"),
        (json.dumps(GOOD | {"choices_level2": ["x"]}), "'choices_level2' without 'level2'"),
        (json.dumps({"image": "a.jpg", "label": "robin", "split": "test"}), "no level1..levelN"),
        (json.dumps(GOOD | {"split": 3}), "'split' must be a string"),
    ],
)
def test_bad_question_line_names_file_and_line(tmp_path, bad_line, message):
    path = write_jsonl(tmp_path / "q.jsonl", [GOOD, bad_line, GOOD])
    with pytest.raises(HierError) as err:
        read_questions(path)
    text = str(err.value)
    assert text.startswith(f"{path}:2: ")
    assert message in text
    assert "\n" not in text


def test_file_without_final_newline_and_missing_file(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD | {"image": "b.jpg"}))
    assert len(read_questions(path)) == 2
    with pytest.raises(HierError, match="file not found"):
        read_questions(tmp_path / "absent.jsonl")


def test_bad_image_list_line(tmp_path):
    path = write_jsonl(tmp_path / "images.jsonl", [{"image": "a.png", "label": "robin", "split": "test"},
                                                  {"image": "b.png", "label": "wren"}])
    with pytest.raises(HierError, match=r"images\.jsonl:2: missing key 'split'"):
        read_image_list(path)


# ---- building with random distractors ---------------------------------------------------


@pytest.fixture(scope="module")
def small() -> Taxonomy:
    return Taxonomy.from_paths(SMALL, level_names=["class", "group", "species"])


def check_records(records: list[QuestionRecord], taxonomy: Taxonomy, num_choices: int = 4) -> None:
    """Truth once among the options; every option a class of the same level."""
    for record in records:
        assert record.truths == list(taxonomy.path(record.label))
        for level, (truth, choices) in enumerate(zip(record.truths, record.choices)):
            classes = taxonomy.nodes_at(level)
            assert choices.count(truth) == 1
            assert len(set(choices)) == len(choices) == min(num_choices, len(classes))
            assert set(choices) <= set(classes)


def test_random_distractors_are_deterministic_and_from_the_same_level(small, tmp_path):
    images = image_list(["robin", "gull", "trout", "salmon", "wren", "tern"] * 3)
    records = build_questions(small, images, distractors="random", seed=7)
    check_records(records, small)
    again = build_questions(small, images, distractors="random", seed=7)
    assert [r.raw for r in again] == [r.raw for r in records]
    other = build_questions(small, images, distractors="random", seed=8)
    assert [r.raw for r in other] != [r.raw for r in records]
    # A sample's questions do not depend on the images after it.
    assert [r.raw for r in build_questions(small, images[:4], seed=7)] == [r.raw for r in records[:4]]
    # What we write, we read back (and it passes the reader's checks).
    write_questions(records, tmp_path / "q.jsonl")
    assert [r.raw for r in read_questions(tmp_path / "q.jsonl")] == [r.raw for r in records]


def test_random_distractors_cover_the_level_and_move_the_truth(small):
    records = build_questions(small, image_list(["robin"] * 60), seed=0)
    leaf_options = {option for r in records for option in r.choices[2]}
    assert leaf_options == set(SMALL)  # all 5 wrong species get drawn over 60 samples
    positions = {r.choices[2].index("robin") for r in records}
    assert positions == {0, 1, 2, 3}


def test_levels_with_fewer_than_four_classes_get_fewer_options(small):
    [record] = build_questions(small, image_list(["tern"]), seed=0)
    assert [len(c) for c in record.choices] == [2, 3, 4]
    assert sorted(record.choices[0]) == ["Bird", "Fish"]
    assert sorted(record.choices[1]) == ["Bony fish", "Seabird", "Songbird"]


def test_single_class_level_kept_or_dropped_as_the_taxonomy_says():
    paths = {leaf: ["Animalia", *path] for leaf, path in SMALL.items()}
    kept = build_questions(Taxonomy.from_paths(paths), image_list(["gull"]))[0]
    assert kept.raw["level1"] == "Animalia" and kept.raw["choices_level1"] == ["Animalia"]
    assert level_keys(kept.raw) == ["level1", "level2", "level3", "level4"]
    dropped = build_questions(Taxonomy.from_paths(paths, drop_trivial_levels=True), image_list(["gull"]))[0]
    assert level_keys(dropped.raw) == ["level1", "level2", "level3"]
    assert dropped.truths == ["Bird", "Seabird", "gull"]


def test_variable_depth_distractors_come_from_the_same_depth():
    taxonomy = Taxonomy.from_paths({
        "cup": ["artifact", "container", "cup"],
        "bowl": ["artifact", "container", "vessel", "bowl"],
        "jar": ["artifact", "container", "vessel", "jar"],
        "car": ["artifact", "vehicle", "car"],
        "bus": ["artifact", "vehicle", "bus"],
        "van": ["artifact", "vehicle", "truck", "van"],
    })
    records = build_questions(taxonomy, image_list(["cup", "bowl", "van"] * 5), seed=1)
    check_records(records, taxonomy)
    assert [len(r.truths) for r in records[:3]] == [3, 4, 4]
    assert set(records[1].choices[3]) <= {"bowl", "jar", "van"}  # depth-4 classes only


def test_labels_resolve_through_the_taxonomy_and_are_written_canonically(reference_data):
    taxonomy = Taxonomy.from_json(reference_data / "taxonomies" / "hierarchy_CUB200.json")
    [record] = build_questions(taxonomy, [{"image": "x.jpg", "label": "black footed albatross", "split": "test"}])
    assert record.label == "Black-footed Albatross"
    assert record.raw["level4"] == "Black-footed Albatross"
    assert record.image == "x.jpg"


def test_unknown_label_names_file_line_and_label(small, tmp_path):
    path = write_jsonl(tmp_path / "images.jsonl", image_list(["robin", "penguin"]))
    with pytest.raises(HierError) as err:
        build_questions(small, read_image_list(path), source=str(path))
    assert str(err.value).startswith(f"{path}:2: ")
    assert "'penguin'" in str(err.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"distractors": "hard"}, "unknown distractors"),
    ({"num_choices": 1}, "num_choices"),
    ({"num_choices": 11}, "num_choices"),
    ({"distractors": "similar"}, "need a CLIP model"),
])
def test_bad_build_arguments(small, kwargs, message):
    with pytest.raises(HierError, match=message):
        build_questions(small, image_list(["robin"]), **kwargs)


# ---- building with similar distractors --------------------------------------------------


def make_images(folder: Path, count: int) -> None:
    """Images told apart by width (8 + i px), so a fake encoder knows which one it sees."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (8 + i, 8), (40 * i % 256, 80, 160)).save(folder / f"{i}.png")


class FakeEncoder:
    """Controlled similarity: each species' text is a basis vector; image i is a fixed mix of
    them, so the 3 most similar wrong species are known by construction."""

    model_key = "fake"
    species = sorted(SMALL)  # bird sp., fish sp. in level order: gull robin salmon tern trout wren
    groups = ["Bony fish", "Seabird", "Songbird"]
    classes = ["Bird", "Fish"]

    def __init__(self, image_mix: list[dict[str, float]]):
        self.image_mix = image_mix
        self.text_calls: list[list[str]] = []
        self.names = self.species + self.groups + self.classes

    def _vector(self, weights: dict[str, float]) -> torch.Tensor:
        v = torch.tensor([weights.get(name, 0.0) for name in self.names])
        return v / v.norm()

    def encode_images(self, images):
        return torch.stack([self._vector(self.image_mix[image.width - 8]) for image in images])

    def encode_texts(self, texts):
        self.text_calls.append(list(texts))
        return torch.stack([self._vector({text[len("a photo of a "):-1]: 1.0}) for text in texts])


def test_similar_picks_the_three_most_similar_wrong_classes(small, tmp_path):
    make_images(tmp_path / "img", 3)
    mixes = [
        # robin: truth scores highest but must be excluded; then tern > gull > trout; salmon, wren 0
        {"robin": 9, "tern": 5, "gull": 4, "trout": 3, "Seabird": 2, "Bony fish": 1, "Fish": 1},
        # gull: wren > salmon > robin (tern, trout lower); its group/class levels have < 4 classes
        {"wren": 6, "salmon": 5, "robin": 4, "tern": 1, "trout": 0.5, "Bird": 1},
        # trout: the truth is not the most similar; the other three wrong ones follow it
        {"gull": 8, "wren": 7, "trout": 6, "tern": 5, "robin": 1},
    ]
    encoder = FakeEncoder(mixes)
    images = image_list(["robin", "gull", "trout"])
    records = build_questions(small, images, distractors="similar", encoder=encoder,
                              image_root=tmp_path, batch_size=2, seed=0)
    check_records(records, small)
    assert set(records[0].choices[2]) == {"robin", "tern", "gull", "trout"}
    assert set(records[1].choices[2]) == {"gull", "wren", "salmon", "robin"}
    assert set(records[2].choices[2]) == {"trout", "gull", "wren", "tern"}
    # Two image batches, but each level's label texts are embedded once.
    assert len(encoder.text_calls) == 3
    assert sorted(map(len, encoder.text_calls)) == [2, 3, 6]


def test_similar_needs_every_image_file(small, tmp_path):
    make_images(tmp_path / "img", 1)
    with pytest.raises(HierError, match=r"images\.jsonl:2: image not found"):
        build_questions(small, image_list(["robin", "gull"]), distractors="similar",
                        encoder=FakeEncoder([{}]), image_root=tmp_path, source="images.jsonl")


def test_similar_skips_and_names_an_unreadable_image(small, tmp_path):
    # issue 11 case 5: one bad image no longer aborts the bank; it is left out, counted and named
    make_images(tmp_path / "img", 1)
    (tmp_path / "img" / "1.png").write_bytes(b"not a png")
    skipped: list[str] = []
    records = build_questions(small, image_list(["robin", "gull"]), distractors="similar",
                              encoder=FakeEncoder([{}]), image_root=tmp_path, source="images.jsonl", skipped=skipped)
    assert [r.label for r in records] == ["robin"] and records[0].sample_id == 0
    assert len(skipped) == 1
    assert re.match(r"images\.jsonl:2: cannot read image .*1\.png", skipped[0])


def test_text_embeddings_disk_cache(tmp_path):
    encoder = FakeEncoder([])
    texts = ["a photo of a robin.", "a photo of a gull."]
    first = TextEmbeddingCache(encoder, tmp_path / "cache")(texts)
    again = TextEmbeddingCache(encoder, tmp_path / "cache")(texts)  # a new run: reads the disk
    assert torch.equal(first, again)
    assert len(encoder.text_calls) == 1
    assert len(list((tmp_path / "cache").iterdir())) == 1
    encoder.model_key = "other model"  # another model must not reuse them
    TextEmbeddingCache(encoder, tmp_path / "cache")(texts)
    assert len(encoder.text_calls) == 2


def test_similar_with_the_tiny_clip_via_cli(small, tiny_clip, tmp_path):
    data = tmp_path / "data"
    make_images(data / "img", 4)
    images = write_jsonl(data / "images.jsonl", image_list(["robin", "gull", "trout", "wren"]))
    out = tmp_path / "q.jsonl"
    taxonomy_file = small.to_json(tmp_path / "taxonomy.json")
    args = ["data", "questions", "--taxonomy", str(taxonomy_file), "--images", str(images),
            "--distractors", "similar", "--clip", str(tiny_clip), "--batch-size", "3",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert main(args) == 0
    records = read_questions(out)
    # issue 11 case 3: written relative to the bank's folder (the one image-path rule), so they resolve
    assert [r.image for r in records] == [f"data/img/{i}.png" for i in range(4)]
    assert all((out.parent / r.image).is_file() for r in records)
    check_records(records, small)
    assert len(list((tmp_path / "cache").iterdir())) == 3  # one file per level
    first = out.read_bytes()
    assert main(args) == 0  # from the cache: same bank
    assert out.read_bytes() == first


# ---- the command ------------------------------------------------------------------------


def test_cli_random_bank(small, tmp_path):
    images = write_jsonl(tmp_path / "images.jsonl", image_list(["Robin", "salmon"]))
    taxonomy_file = small.to_json(tmp_path / "taxonomy.json")
    out = tmp_path / "out" / "q.jsonl"
    assert main(["data", "questions", "--taxonomy", str(taxonomy_file), "--images", str(images),
                 "--seed", "3", "--out", str(out)]) == 0
    records = read_questions(out)
    assert [r.label for r in records] == ["robin", "salmon"]
    # the bank's image paths are relative to the bank's folder (one image-path rule, issue 11 case 3)
    expected = [{**r.raw, "image": f"../{r.image}"} for r in build_questions(small, read_image_list(images), seed=3)]
    assert [r.raw for r in records] == expected


def test_cli_errors_are_one_line_with_the_entry_point(small, tmp_path):
    images = write_jsonl(tmp_path / "images.jsonl", [image_list(["robin"])[0], "{oops"])
    taxonomy_file = small.to_json(tmp_path / "taxonomy.json")
    base = [str(HIERTRAIN), "data", "questions", "--taxonomy", str(taxonomy_file), "--out", str(tmp_path / "q.jsonl")]
    done = subprocess.run([*base, "--images", str(images)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith(f"hiertrain: {images}:2: not valid JSON (")
    assert done.stderr.count("\n") == 1 and done.stderr.endswith(")\n")
    assert not (tmp_path / "q.jsonl").exists()
    assert main(base[1:] + ["--images", str(images), "--distractors", "similar"]) == 2


@pytest.mark.parametrize(
    "second, message",
    [
        (GOOD, "q.jsonl:2: record 'a.jpg' repeats line 1 (one record per image: it would be scored twice)"),
        (GOOD | {"label": "wren", "id": "7"}, None),  # an id of its own: another record
        (GOOD | {"image": "b.jpg"}, None),
        (GOOD | {"image": "b.jpg", "choices_level1": ["Fish", "bird ", "Bird"]},
         "q.jsonl:2: 'choices_level1' repeats an option after normalisation (case, spaces, -/_): ['Bird', 'bird ']"),
        (GOOD | {"image": "b.jpg", "choices_level1": ["Fish", "BIRD", "Bird"]}, "after normalisation"),
        (GOOD | {"image": ""}, "q.jsonl:2: empty 'image' field (a record names its image file)"),
        (GOOD | {"image": "  "}, "empty 'image' field"),
    ],
)
def test_repeated_records_look_alike_options_and_empty_images_are_refused(tmp_path, second, message):
    """Issue 22 item 18: each would have been asked (and a repeat scored twice) without a word."""
    path = write_jsonl(tmp_path / "q.jsonl", [GOOD, second])
    if message is None:
        assert [r.sample_id for r in read_questions(path)] == [0, 1]
        return
    with pytest.raises(HierError) as err:
        read_questions(path)
    assert message in str(err.value) and str(err.value).startswith(f"{path}:2: ")


def test_repeated_ids_work_from_ids_alone() -> None:
    from hiertrain.taxonomy.question_bank import repeated_ids

    assert repeated_ids(["a", None, "b", "a", "a", None, "b"]) == [(1, 4, "a"), (1, 5, "a"), (3, 7, "b")]
    assert repeated_ids([]) == [] and repeated_ids(["a", "b"]) == []


# ---- issue 24: banks are streamed, not held ------------------------------------------------


def test_cli_streamed_bank_equals_the_list_built_and_written(small, tmp_path, capsys):
    # `data questions` writes records as they are built: the bytes and the message equal the
    # list path's (build_questions + write_questions, computed here) on a bank with short levels.
    labels = ["robin", "gull", "trout", "salmon", "wren", "tern", "Robin"] * 5
    images = write_jsonl(tmp_path / "images.jsonl", image_list(labels))
    taxonomy_file = small.to_json(tmp_path / "taxonomy.json")
    out = tmp_path / "q.jsonl"
    argv = ["data", "questions", "--taxonomy", str(taxonomy_file), "--images", str(images), "--seed", "5", "--out", str(out)]
    assert main(argv) == 0
    listed = build_questions(small, read_image_list(images), seed=5)  # out is beside images: paths unchanged
    expected = tmp_path / "expected.jsonl"
    write_questions(listed, expected)
    assert out.read_bytes() == expected.read_bytes()
    short = sum(1 for r in listed for choices in r.choices if len(choices) < 4)
    assert short > 0
    assert capsys.readouterr().err.strip().endswith(f"wrote {len(listed)} records to {out} ({short} questions have fewer than 4 options)")


def test_iter_questions_checks_every_label_before_it_yields(small):
    from hiertrain.taxonomy.question_bank import iter_questions

    images = image_list(["robin"] * 50 + ["dodo"])
    with pytest.raises(HierError, match=r"<memory>:51: label 'dodo' is not a leaf"):
        iter_questions(small, images)  # raised by the call, not by the 51st record
