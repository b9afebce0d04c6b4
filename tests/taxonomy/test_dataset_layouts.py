"""`data prepare`: official download layouts (tiny fixture trees) -> image lists with taxonomy labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from hiertrain.cli.main import main
from hiertrain.taxonomy.dataset_layouts import prepare
from hiertrain.base.errors import HierError
from hiertrain.taxonomy.question_bank import read_image_list
from hiertrain.taxonomy.taxonomy import Taxonomy


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
        "n09999991 (trilobite): ambiguous: 2 classes (n09999991, n09999992) match leaf 'trilobite'": 2,
        "n09999992 (trilobite, fossil arthropod): ambiguous: 2 classes (n09999991, n09999992) match leaf 'trilobite'": 2,
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


# ---- issue 22: faults injected into the official layouts --------------------------------------


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hiertrain: ") and err.count("\n") == 1, err
    return err


def test_cub_duplicate_image_id_is_an_error_naming_it(cub_root, tmp_path, capsys):
    # item 2: an id listed twice in images.txt dropped one image and mislabelled the other
    lines = (cub_root / "images.txt").read_text().splitlines()
    lines.insert(3, "2 001.Black_footed_Albatross/extra.jpg")
    _write(cub_root / "images.txt", "\n".join(lines) + "\n")
    out = tmp_path / "cub.jsonl"
    err = _one_line_error(capsys, ["data", "prepare", "cub", "--root", str(cub_root), "--out", str(out)])
    assert f"{cub_root / 'images.txt'}:4: id 2 listed twice (first on line 2)" in err
    assert not out.exists()


def test_cub_two_classes_on_one_leaf_are_both_listed_with_their_counts(cub_root, tmp_path, capsys):
    # item 4: class 3 renamed onto class 2's leaf: 2 classes (2 + 2 images) are ambiguous, and
    # the report said "1 classes unmatched (1 images)"
    _write(cub_root / "classes.txt", "1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n3 003.Laysan_Albatross\n")
    labels = (cub_root / "image_class_labels.txt").read_text().replace("6 3", "6 2")  # class 2: 3 images, class 3: 1
    _write(cub_root / "image_class_labels.txt", labels)
    result = prepare("cub", cub_root, tax("CUB200"))
    assert result.unmatched == {
        "class 2 (Laysan_Albatross): ambiguous: 2 classes (2, 3) match leaf 'Laysan Albatross'": 3,
        "class 3 (Laysan_Albatross): ambiguous: 2 classes (2, 3) match leaf 'Laysan Albatross'": 1,
    }
    assert main(["data", "prepare", "cub", "--root", str(cub_root), "--out", str(tmp_path / "c.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert "2 classes unmatched (4 images left out)" in printed
    assert "unmatched: class 2 (Laysan_Albatross)" in printed and "unmatched: class 3 (Laysan_Albatross)" in printed


def test_cub_classes_file_encodings(cub_root, tmp_path, capsys):
    # items 9 and 17: one decoding rule (UTF-8, a BOM dropped); Latin-1 is a one-line error
    # naming the file and line instead of a UnicodeDecodeError traceback
    text = (cub_root / "classes.txt").read_text()
    (cub_root / "classes.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())
    with_bom = prepare("cub", cub_root, tax("CUB200"))
    assert len(with_bom.images) == 4 and with_bom.unmatched == {"Dodo_Bird: no leaf": 2}
    (cub_root / "classes.txt").write_bytes(text.replace("003.Dodo_Bird", "003.Dodo_Bird_Caf\u00e9").encode("latin-1"))
    err = _one_line_error(capsys, ["data", "prepare", "cub", "--root", str(cub_root), "--out", str(tmp_path / "x.jsonl")])
    assert f"{cub_root / 'classes.txt'}:3: not UTF-8 text (byte 0xe9); save it as UTF-8" in err


def test_missing_image_files_are_counted_and_the_first_named(cub_root, tmp_path, capsys):
    # item 17: listed images without a file were written into the list without a word
    gone = sorted((cub_root / "images").rglob("*.jpg"))[:2]
    for p in gone:
        p.unlink()
    result = prepare("cub", cub_root, tax("CUB200"))
    assert result.missing == [str(p) for p in gone]
    assert len(result.images) == 2 and all(Path(r["image"]).is_file() for r in result.images)
    out = tmp_path / "cub.jsonl"
    assert main(["data", "prepare", "cub", "--root", str(cub_root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"missing: 2 listed image files do not exist (left out): {gone[0]}, {gone[1]}" in printed
    assert "2 images (test 1, train 1) of 2 classes" in printed and "2 missing image files left out" in printed
    err = _one_line_error(capsys, ["data", "prepare", "cub", "--root", str(cub_root), "--out", str(tmp_path / "s.jsonl"), "--strict", "--taxonomy", "hiertrain://taxonomies/hierarchy_CUB200.json"])
    assert "have no leaf" in err  # the unmatched Dodo comes first; without it, the missing files:
    _write(cub_root / "classes.txt", "1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    _write(cub_root / "images.txt", "".join((cub_root / "images.txt").read_text().splitlines(keepends=True)[:4]))
    err = _one_line_error(capsys, ["data", "prepare", "cub", "--root", str(cub_root), "--out", str(tmp_path / "s.jsonl"), "--strict"])
    assert f"2 listed image files do not exist (--strict); the first is {gone[0]}" in err


def _inat_root(tmp_path) -> Path:
    root = tmp_path / "inat21"
    cats = [{"id": 0, "genus": "Houstonia", "specific_epithet": "purpurea"}]
    imgs = [{"id": i, "file_name": f"train/{i}.jpg"} for i in range(3)]
    for im in imgs:
        _jpg(root / im["file_name"])
    anns = [{"id": i, "image_id": i, "category_id": 0} for i in range(3)]
    _write(root / "train.json", json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
    return root


def test_inat21_duplicate_image_id_is_an_error(tmp_path, capsys):
    # item 3: the last image of a duplicated id won silently
    root = _inat_root(tmp_path)
    data = json.loads((root / "train.json").read_text())
    data["images"].append({"id": 1, "file_name": "train/other.jpg"})
    _write(root / "train.json", json.dumps(data))
    err = _one_line_error(capsys, ["data", "prepare", "inat21", "--root", str(root), "--out", str(tmp_path / "x.jsonl"), "--taxonomy", "hiertrain://taxonomies/hierarchy_Inat_plantae.json"])
    assert f"{root / 'train.json'}: images[3]: image id 1 listed twice (first as 'train/1.jpg')" in err
    data["images"].pop()
    data["annotations"].append({"id": 9, "image_id": 2, "category_id": 0})  # one image, two labels
    _write(root / "train.json", json.dumps(data))
    with pytest.raises(HierError, match=r"annotations\[3\]: image 2 annotated twice \(first in annotations\[2\]\)"):
        prepare("inat21", root, tax("Inat_plantae"))


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda d: d["images"], r"expected the COCO-style object .*got a JSON list"),
        (lambda d: {**d, "annotations": [{"id": 0, "category_id": 0}]}, r"annotations\[0\] has no image_id"),
        (lambda d: {**d, "images": [{"file_name": "train/0.jpg"}]}, r"images\[0\] has no id"),
        (lambda d: {**d, "images": [{"id": 0}]}, r"images\[0\] has no file_name"),
        (lambda d: {**d, "images": {"0": "train/0.jpg"}}, r"'images' must be a list, got a JSON dict"),
        (lambda d: {**d, "categories": ["Houstonia purpurea"]}, r"categories\[0\] must be an object"),
    ],
)
def test_inat21_malformed_train_json_is_one_line(tmp_path, capsys, mangle, message):
    # item 9: a list or entries without image_id / id / file_name were AttributeError / KeyError
    root = _inat_root(tmp_path)
    _write(root / "train.json", json.dumps(mangle(json.loads((root / "train.json").read_text()))))
    err = _one_line_error(capsys, ["data", "prepare", "inat21", "--root", str(root), "--out", str(tmp_path / "x.jsonl"), "--taxonomy", "hiertrain://taxonomies/hierarchy_Inat_plantae.json"])
    assert str(root / "train.json") in err
    import re

    assert re.search(message, err), err


def _food_root(tmp_path) -> Path:
    root = tmp_path / "food-101"
    _write(root / "meta/classes.txt", "pancakes\n")
    _write(root / "meta/train.txt", "pancakes/1\npancakes/2\n")
    _write(root / "meta/test.txt", "pancakes/3\n")
    for i in (1, 2, 3):
        _jpg(root / f"images/pancakes/{i}.jpg")
    return root


def test_food101_duplicate_lines_and_an_image_in_both_splits(tmp_path, capsys):
    # item 17: both passed without a word (a sample counted twice; a test image trained on)
    root = _food_root(tmp_path)
    assert len(prepare("food101", root, tax("Food")).images) == 3
    _write(root / "meta/train.txt", "pancakes/1\npancakes/2\n\npancakes/1\n")
    err = _one_line_error(capsys, ["data", "prepare", "food101", "--root", str(root), "--out", str(tmp_path / "x.jsonl")])
    assert f"{root / 'meta/train.txt'}:4: image 'pancakes/1' listed twice (also train.txt:1)" in err
    _write(root / "meta/train.txt", "pancakes/1\npancakes/2\n")
    _write(root / "meta/test.txt", "pancakes/3\npancakes/2\n")
    err = _one_line_error(capsys, ["data", "prepare", "food101", "--root", str(root), "--out", str(tmp_path / "x.jsonl")])
    assert f"{root / 'meta/test.txt'}:2: image 'pancakes/2' in both splits (also train.txt:2)" in err
