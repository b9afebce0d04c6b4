"""`data prepare`: official download layouts (tiny fixture trees) -> image lists with taxonomy labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from hiertrain.cli.main import main
from hiertrain.core.dataset_layouts import prepare
from hiertrain.core.errors import HierError
from hiertrain.core.question_bank import read_image_list
from hiertrain.core.taxonomy import Taxonomy


def _jpg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (120, 30, 200)).save(path)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def tax(name: str) -> Taxonomy:
    return Taxonomy.from_json(f"hiertrain://taxonomies/hierarchy_{name}.json", on_multi_parent="first")


@pytest.fixture()
def cub_root(tmp_path) -> Path:
    """CUB_200_2011: 3 classes (one, 'Dodo Bird', in no taxonomy), 2 images each."""
    root = tmp_path / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Dodo_Bird"]
    images, labels, split = [], [], []
    n = 0
    for c, cls in enumerate(classes, 1):
        for k in range(2):
            n += 1
            rel = f"{cls}/{cls[4:]}_{k:04d}.jpg"
            _jpg(root / "images" / rel)
            images.append(f"{n} {rel}")
            labels.append(f"{n} {c}")
            split.append(f"{n} {1 if k == 0 else 0}")
    _write(root / "classes.txt", "".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)))
    _write(root / "images.txt", "\n".join(images) + "\n")
    _write(root / "image_class_labels.txt", "\n".join(labels) + "\n")
    _write(root / "train_test_split.txt", "\n".join(split) + "\n")
    return root


def test_cub_layout(cub_root, tmp_path, capsys):
    result = prepare("cub", cub_root.parent, tax("CUB200"))  # the folder above CUB_200_2011 works too
    assert result.classes == 3 and result.splits == {"test": 2, "train": 2}
    assert {r["label"] for r in result.images} == {"Black-footed Albatross", "Laysan Albatross"}
    assert result.unmatched == {"Dodo_Bird: no leaf": 2}
    assert all(Path(r["image"]).is_file() for r in result.images)
    out = tmp_path / "cub.jsonl"
    assert main(["data", "prepare", "cub", "--root", str(cub_root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "unmatched: Dodo_Bird: no leaf (2 images)" in printed
    assert "4 images (test 2, train 2) of 2 classes; 1 classes unmatched (2 images left out)" in printed
    assert read_image_list(out) == result.images
    assert main(["data", "prepare", "cub", "--root", str(cub_root), "--out", str(tmp_path / "s.jsonl"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "1 of 3 classes (2 images) have no leaf" in err and err.count("\n") == 1
    assert not (tmp_path / "s.jsonl").exists()


def test_inat21_layout(tmp_path):
    root = tmp_path / "inat21"

    def cat(i, genus, epithet, kingdom="Plantae"):
        return {"id": i, "name": f"{genus} {epithet}", "kingdom": kingdom, "phylum": "p", "class": "c",
                "order": "o", "family": "f", "genus": genus, "specific_epithet": epithet}  # fmt: skip

    cats = [cat(0, "Houstonia", "purpurea"), cat(1, "Encelia", "californica"), cat(2, "Branta", "leucopsis", "Animalia")]
    for split, per in (("train", 2), ("val", 1)):
        imgs, anns = [], []
        for c in cats:
            for k in range(per):
                iid = len(imgs) + 100 * (split == "val")
                fname = f"{split}/{c['id']:05d}_{c['name'].replace(' ', '_')}/{k}.jpg"
                _jpg(root / fname)
                imgs.append({"id": iid, "file_name": fname})
                anns.append({"id": iid, "image_id": iid, "category_id": c["id"]})
        _write(root / f"{split}.json", json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
    result = prepare("inat21", root, tax("Inat_plantae"))
    assert result.splits == {"train": 4, "val": 2}
    assert sorted({r["label"] for r in result.images}) == ["Encelia californica", "Houstonia purpurea"]
    assert result.unmatched == {"Branta leucopsis: no leaf": 3}
    animals = prepare("inat21", root, tax("Inat_animal"))
    assert {r["label"] for r in animals.images} == {"Branta leucopsis"} and len(animals.unmatched) == 2


def test_food101_layout(tmp_path):
    root = tmp_path / "food-101"
    classes = ["eggs_benedict", "pancakes", "mystery_stew"]
    _write(root / "meta/classes.txt", "\n".join(classes) + "\n")
    _write(root / "meta/train.txt", "".join(f"{c}/{100 + i}\n{c}/{200 + i}\n" for i, c in enumerate(classes)))
    _write(root / "meta/test.txt", "".join(f"{c}/{300 + i}\n" for i, c in enumerate(classes)))
    for c in classes:
        for line in (root / "meta/train.txt").read_text().split() + (root / "meta/test.txt").read_text().split():
            _jpg(root / "images" / f"{line}.jpg")
    result = prepare("food101", tmp_path, tax("Food"))  # finds food-101/ below the root
    assert result.splits == {"test": 2, "train": 4}
    assert {r["label"] for r in result.images} == {"eggs benedict", "pancakes"}
    assert result.unmatched == {"mystery_stew: no leaf": 3}
    assert all(Path(r["image"]).is_file() for r in result.images)


def test_imagenet_layout_any_synonym_and_ambiguity(tmp_path):
    root = tmp_path / "imagenet"
    mapping = {
        "n01440764": "tench, Tinca tinca",
        "n01443537": "Carassius auratus, goldfish",  # matched through its second name
        "n09999990": "jackalope, horned rabbit",  # no leaf in the animal taxonomy
        "n09999991": "trilobite",  # two synsets on one leaf: ambiguous, both reported
        "n09999992": "trilobite, fossil arthropod",
    }
    _write(root / "LOC_synset_mapping.txt", "".join(f"{k} {v}\n" for k, v in mapping.items()))
    for wnid in mapping:
        for k in range(2):
            _jpg(root / "train" / wnid / f"{wnid}_{k}.JPEG")
    rows = ["ImageId,PredictionString"]
    for i, wnid in enumerate(["n01440764", "n01443537", "n09999990"]):
        image_id = f"ILSVRC2012_val_{i:08d}"
        _jpg(root / "val" / f"{image_id}.JPEG")
        rows.append(f"{image_id},{wnid} 1 2 30 40 {wnid} 5 6 7 8")
    _write(root / "LOC_val_solution.csv", "\n".join(rows) + "\n")
    result = prepare("imagenet", root, tax("imagenet_animal"))
    assert result.classes == 5
    assert result.splits == {"train": 4, "val": 2}
    assert sorted({r["label"] for r in result.images}) == ["goldfish", "tench"]
    assert result.unmatched == {
        "n09999990 (jackalope, horned rabbit): no leaf": 3,
        "n09999991 (trilobite): ambiguous: 2 classes match leaf 'trilobite'": 2,
        "n09999992 (trilobite, fossil arthropod): ambiguous: 2 classes match leaf 'trilobite'": 2,
    }
    val = [r for r in result.images if r["split"] == "val"]
    assert [Path(r["image"]).name for r in val] == ["ILSVRC2012_val_00000000.JPEG", "ILSVRC2012_val_00000001.JPEG"]


def test_bad_layouts_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(HierError, match="images.txt: missing"):
        prepare("cub", tmp_path, tax("CUB200"))
    with pytest.raises(HierError, match="no train.json or val.json"):
        prepare("inat21", tmp_path, tax("Inat_plantae"))
    assert main(["data", "prepare", "imagenet", "--root", str(tmp_path), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "give --taxonomy" in capsys.readouterr().err
