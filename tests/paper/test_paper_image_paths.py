"""The authors' absolute image paths -> the user's download (`--data.image_root`)."""

from __future__ import annotations

import pytest
from PIL import Image

from hiertrain.base.errors import HierError
from hiertrain.paper.paper_image_paths import AUTHORS_PREFIX, image_root_map
from hiertrain.taxonomy.question_bank import read_questions

CUB = AUTHORS_PREFIX + "CUB_200_2011/images/"


def _images(root, rels):
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(root / rel)


def test_the_shipped_cub_paths_map_onto_a_cub_download_or_its_parent(tmp_path):
    paths = [r.image for r in read_questions("hiertrain://annotations/CUB200_with_random_choice.jsonl")[:40]]
    assert all(p.startswith(CUB) for p in paths)
    cub = tmp_path / "downloads" / "CUB_200_2011"
    _images(cub / "images", [p[len(CUB):] for p in paths[:3]])
    mapping = image_root_map(paths, cub)  # the user points at CUB_200_2011
    assert mapping == {AUTHORS_PREFIX + "CUB_200_2011": str(cub)}
    mapping = image_root_map(paths, cub.parent)  # ... or at the folder that holds it
    assert mapping == {AUTHORS_PREFIX.rstrip("/"): str(cub.parent)}
    old, new = next(iter(mapping.items()))
    assert (new + paths[0][len(old):]).endswith("images/" + paths[0][len(CUB):])


def test_image_root_errors(tmp_path):
    with pytest.raises(HierError, match="no such folder"):
        image_root_map([CUB + "a/b.jpg"], tmp_path / "missing")
    with pytest.raises(HierError, match="do not start with the authors' folder"):
        image_root_map(["/elsewhere/a.jpg"], tmp_path)
    with pytest.raises(HierError, match="none of 1 sampled images found under image_root"):
        image_root_map([CUB + "001.X/a.jpg"], tmp_path)
