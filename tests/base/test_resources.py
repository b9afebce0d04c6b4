"""Packaged reference data: hiertrain:// names, gzip-transparent readers, identical to the source."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from hiertrain.base.errors import HierError
from hiertrain.taxonomy.question_bank import read_image_list, read_questions
from hiertrain.base.resources import packaged_names, read_data_bytes, reference_dir, resolve_data_path
from hiertrain.taxonomy.taxonomy import Taxonomy, level_names_path

EXPECTED = [
    "annotations/CUB200_with_random_choice.jsonl",
    "annotations/CUB200_with_similar_choice.jsonl",
    "probing/CUB200/images_split.jsonl",
    "probing/CUB200/test_taxonomy.json",
    "probing/CUB200/train_taxonomy.json",
    "probing/Inat21_Plant/test_taxonomy.json",
    "probing/Inat21_Plant/train_taxonomy.json",
    *(f"taxonomies/hierarchy_{n}.json" for n in ("CUB200", "Food", "Inat_animal", "Inat_plantae", "imagenet_animal", "imagenet_artifact")),
]


def test_packaged_names_and_size():
    assert sorted(n.removeprefix("hiertrain://") for n in packaged_names()) == sorted(EXPECTED)
    total = sum(p.stat().st_size for p in reference_dir().rglob("*.gz"))
    assert total < 1_000_000  # "all of it is under 1 MB gzipped"


@pytest.mark.parametrize("rel", EXPECTED)
def test_packaged_copy_is_byte_identical_to_the_reference(shared_data, rel):
    assert read_data_bytes(f"hiertrain://{rel}") == (shared_data / rel).read_bytes()


def test_resolution_from_any_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    real = resolve_data_path("hiertrain://taxonomies/hierarchy_CUB200.json")
    assert real.is_absolute() and real.name == "hierarchy_CUB200.json.gz"
    assert resolve_data_path("hiertrain://taxonomies/hierarchy_CUB200.json.gz") == real
    assert resolve_data_path(Path("hiertrain://taxonomies/hierarchy_CUB200.json")) == real  # Path() collapses //
    assert resolve_data_path("some/file.json") == Path("some/file.json")
    with pytest.raises(HierError, match="hiertrain://taxonomies/nope.json: no such packaged file"):
        resolve_data_path("hiertrain://taxonomies/nope.json")


def test_readers_take_packaged_and_gzipped_files(tmp_path):
    cub = Taxonomy.from_json("hiertrain://taxonomies/hierarchy_CUB200.json")
    assert len(cub) == 200 and cub.level_names == ["order", "family", "genus", "species"]
    records = read_questions("hiertrain://annotations/CUB200_with_similar_choice.jsonl")
    assert len(records) == 5794 and records[0].label == "Black-footed Albatross"
    images = read_image_list("hiertrain://probing/CUB200/images_split.jsonl")
    assert len(images) == 11788
    # a user's own gzipped files, with the level-names sidecar of the uncompressed name
    own = tmp_path / "mine.json.gz"
    own.write_bytes(gzip.compress(b'{"b": ["r", "a", "b"], "c": ["r", "a", "c"]}'))
    assert level_names_path(own) == tmp_path / "mine.levels.json"
    (tmp_path / "mine.levels.json").write_text('["root", "mid", "leaf"]')
    assert Taxonomy.from_json(own).level_names == ["root", "mid", "leaf"]
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(HierError, match="bad.jsonl.gz: not a readable gzip file"):
        read_questions(bad)


def test_image_list_as_a_json_list(tmp_path):
    """The paper's Inat21_Plant_all.json holds one JSON list of image, label, split."""
    path = tmp_path / "all.json"
    path.write_text('[{"image": "a.jpg", "label": "x", "split": "train"}, {"image": "b.jpg", "label": "y"}]')
    with pytest.raises(HierError, match=r"all.json:item 2: missing key 'split'"):
        read_image_list(path)
    path.write_text('[{"image": "a.jpg", "label": "x", "split": "train"}]')
    assert read_image_list(path) == [{"image": "a.jpg", "label": "x", "split": "train"}]


def test_configs_and_package_never_point_outside_the_repository():
    repo = Path(__file__).resolve().parents[2]
    offenders = [
        str(p.relative_to(repo))
        for top in ("configs", "hiertrain")
        for p in (repo / top).rglob("*")
        if p.is_file() and p.suffix in {".yaml", ".py", ".md", ".json"} and "../shared" in p.read_text(errors="replace")
    ]
    assert offenders == []
