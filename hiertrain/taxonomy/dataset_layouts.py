"""Image lists (`image`, `label`, `split`) from the official dataset downloads.

Each reader knows one official layout and yields (image path, class name, split) per image;
`prepare` matches every class to a leaf of the taxonomy (by `normalize_label`, so
"001.Black_footed_Albatross" finds "Black-footed Albatross" and "eggs_benedict" finds
"eggs benedict") and writes the leaf's spelling. Classes with no leaf are never dropped
silently: they are returned, with their image counts, in `Prepared.unmatched`.

Layouts:
- cub: CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt, train_test_split.txt,
  images/}; split 1 = train, 0 = test; class names drop their "NNN." prefix.
- inat21: {train,val}.json (COCO style; categories carry kingdom .. genus, specific_epithet);
  the class is "Genus epithet"; file_name is relative to the root; splits train / val.
- food101: meta/classes.txt, meta/{train,test}.txt ("class/id"), images/<class>/<id>.jpg.
- imagenet: train/<wnid>/*.JPEG (split train), val/<ImageId>.JPEG with labels from
  LOC_val_solution.csv (split val), names from LOC_synset_mapping.txt ("wnid name, name, ...");
  a synset matches a leaf when any of its comma-separated names does. The Kaggle layout
  (ILSVRC/Data/CLS-LOC/{train,val}) is found too.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hiertrain.base.errors import HierError
from hiertrain.taxonomy.taxonomy import Taxonomy, normalize_label

DATASETS = ("cub", "inat21", "food101", "imagenet")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


@dataclass
class Prepared:
    """The image list and what did not match."""

    images: list[dict]  # {"image": absolute path, "label": leaf (taxonomy spelling), "split"}
    classes: int  # classes in the download
    unmatched: dict[str, int] = field(default_factory=dict)  # class name -> images left out
    splits: dict[str, int] = field(default_factory=dict)  # images per split (matched only)
    missing: list[str] = field(default_factory=list)  # listed images of matched classes with no file (left out)


# How many missing image files `data prepare` names (all are counted).
MISSING_SHOWN = 3


def read_text(path: Path) -> str:
    """The file as text by one rule: UTF-8, a leading byte-order mark dropped (editors on
    Windows write one). Anything else (Latin-1, UTF-16) is a one-line error naming the file and
    line, never a guess: a wrong guess would spell class names wrongly and match no leaf."""
    if not path.is_file():
        raise HierError(f"{path}: missing (not the official layout?)")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise HierError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of the non-blank lines, numbered as an editor shows them."""
    return [(n, line) for n, line in enumerate(read_text(path).splitlines(), 1) if line.strip()]


def _pairs(path: Path) -> dict[str, str]:
    """Lines "key value" -> {key: value}; HierError "FILE:LINE" otherwise, also for a key
    listed twice (a dict would keep the last one silently: one image lost, one mislabelled)."""
    out: dict[str, str] = {}
    first: dict[str, int] = {}
    for n, line in _lines(path):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise HierError(f"{path}:{n}: expected '<id> <value>', got {line!r}")
        if parts[0] in first:
            raise HierError(f"{path}:{n}: id {parts[0]} listed twice (first on line {first[parts[0]]})")
        first[parts[0]] = n
        out[parts[0]] = parts[1].strip()
    return out


# ---- readers: (image path, class key, split) -------------------------------------------------


def read_cub(root: Path) -> tuple[dict[str, list[str]], Iterator[tuple[Path, str, str]]]:
    if not (root / "images.txt").is_file() and (root / "CUB_200_2011/images.txt").is_file():
        root = root / "CUB_200_2011"
    images, labels = _pairs(root / "images.txt"), _pairs(root / "image_class_labels.txt")
    classes, splits = _pairs(root / "classes.txt"), _pairs(root / "train_test_split.txt")
    names = {cid: [name.split(".", 1)[1] if "." in name else name] for cid, name in classes.items()}

    def items():
        for image_id, rel in images.items():
            where = f"{root / 'images.txt'}: image {image_id}"
            if image_id not in labels or image_id not in splits:
                raise HierError(f"{where}: no class label or split")
            if labels[image_id] not in names:
                raise HierError(f"{where}: class {labels[image_id]} not in classes.txt")
            if splits[image_id] not in ("0", "1"):
                raise HierError(f"{root / 'train_test_split.txt'}: image {image_id}: split must be 0 or 1")
            yield root / "images" / rel, labels[image_id], "train" if splits[image_id] == "1" else "test"

    return names, items()


def read_inat21(root: Path) -> tuple[dict[str, list[str]], Iterator[tuple[Path, str, str]]]:
    files = [(split, root / f"{split}.json") for split in ("train", "val") if (root / f"{split}.json").is_file()]
    if not files:
        raise HierError(f"{root}: no train.json or val.json (the iNat21 annotation files)")
    loaded, names = [], {}
    for split, path in files:
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as err:
            raise HierError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
        if not isinstance(data, dict):
            raise HierError(f"{path}: expected the COCO-style object with images, annotations, categories; got a JSON {type(data).__name__}")
        for cat in _entries(path, data, "categories", ("id",)):
            if "genus" not in cat or "specific_epithet" not in cat:
                raise HierError(f"{path}: category {cat.get('id')} has no genus / specific_epithet")
            names[str(cat["id"])] = [f"{cat['genus']} {cat['specific_epithet']}"]
        files_by_id: dict = {}
        for k, im in enumerate(_entries(path, data, "images", ("id", "file_name"))):
            if im["id"] in files_by_id:
                raise HierError(f"{path}: images[{k}]: image id {im['id']} listed twice (first as {files_by_id[im['id']]!r})")
            files_by_id[im["id"]] = im["file_name"]
        anns = _entries(path, data, "annotations", ("image_id", "category_id"))
        labelled: dict = {}
        for k, ann in enumerate(anns):
            if ann["image_id"] in labelled:
                raise HierError(f"{path}: annotations[{k}]: image {ann['image_id']} annotated twice (first in annotations[{labelled[ann['image_id']]}])")
            labelled[ann["image_id"]] = k
        loaded.append((split, path, files_by_id, anns))

    def items():
        for split, path, files_by_id, anns in loaded:
            for ann in anns:
                if ann["image_id"] not in files_by_id:
                    raise HierError(f"{path}: annotation of unknown image {ann['image_id']}")
                if str(ann["category_id"]) not in names:
                    raise HierError(f"{path}: image {ann['image_id']}: unknown category {ann['category_id']}")
                yield root / files_by_id[ann["image_id"]], str(ann["category_id"]), split

    return names, items()


def _entries(path: Path, data: dict, key: str, required: tuple[str, ...]) -> list[dict]:
    """`data[key]` as a list of objects that each have the `required` keys; one-line errors
    naming the file, the list and the entry otherwise (not a KeyError / AttributeError)."""
    items = data.get(key, [])
    if not isinstance(items, list):
        raise HierError(f"{path}: '{key}' must be a list, got a JSON {type(items).__name__}")
    for k, item in enumerate(items):
        if not isinstance(item, dict):
            raise HierError(f"{path}: {key}[{k}] must be an object, got {item!r:.40}")
        lacking = [r for r in required if r not in item]
        if lacking:
            raise HierError(f"{path}: {key}[{k}] has no {' / '.join(lacking)}")
    return items


def read_food101(root: Path) -> tuple[dict[str, list[str]], Iterator[tuple[Path, str, str]]]:
    if not (root / "meta").is_dir() and (root / "food-101/meta").is_dir():
        root = root / "food-101"
    classes = _lines(root / "meta/classes.txt")
    names: dict[str, list[str]] = {}
    for n, c in classes:
        if c.strip() in names:
            raise HierError(f"{root / 'meta/classes.txt'}:{n}: class {c.strip()!r} listed twice")
        names[c.strip()] = [c.strip()]
    lists = [(split, _lines(root / f"meta/{split}.txt"), root / f"meta/{split}.txt") for split in ("train", "test")]
    # an image listed twice would be one sample counted twice; one in both splits leaks test
    # images into training: both are errors naming the two lines
    seen: dict[str, str] = {}
    for split, lines, path in lists:
        for n, line in lines:
            where = f"{path.name}:{n}"
            if line.strip() in seen:
                first = seen[line.strip()]
                what = "listed twice" if first.split(":")[0] == path.name else "in both splits"
                raise HierError(f"{path}:{n}: image {line.strip()!r} {what} (also {first})")
            seen[line.strip()] = where

    def items():
        for split, lines, path in lists:
            for n, line in lines:
                cls = line.split("/", 1)[0]
                if cls not in names:
                    raise HierError(f"{path}:{n}: class {cls!r} not in meta/classes.txt")
                yield root / "images" / f"{line.strip()}.jpg", cls, split

    return names, items()


def read_imagenet(root: Path) -> tuple[dict[str, list[str]], Iterator[tuple[Path, str, str]]]:
    data_dir = root / "ILSVRC/Data/CLS-LOC" if (root / "ILSVRC/Data/CLS-LOC").is_dir() else root
    mapping = _pairs(root / "LOC_synset_mapping.txt")
    names = {wnid: [n.strip() for n in text.split(",") if n.strip()] for wnid, text in mapping.items()}
    solution = root / "LOC_val_solution.csv"

    def items():
        train = data_dir / "train"
        if train.is_dir():
            for wnid in sorted(os.listdir(train)):
                if not (train / wnid).is_dir():
                    continue
                if wnid not in names:
                    raise HierError(f"{train / wnid}: synset not in LOC_synset_mapping.txt")
                for name in sorted(os.listdir(train / wnid)):
                    if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                        yield train / wnid / name, wnid, "train"
        if solution.is_file():
            with io.StringIO(read_text(solution), newline="") as f:
                for n, row in enumerate(csv.DictReader(f), 2):
                    try:
                        wnid = row["PredictionString"].split()[0]
                        image_id = row["ImageId"]
                    except (KeyError, IndexError, AttributeError):
                        raise HierError(f"{solution}:{n}: expected ImageId,PredictionString") from None
                    if wnid not in names:
                        raise HierError(f"{solution}:{n}: synset {wnid} not in LOC_synset_mapping.txt")
                    yield data_dir / "val" / f"{image_id}.JPEG", wnid, "val"

    return names, items()


READERS = {"cub": read_cub, "inat21": read_inat21, "food101": read_food101, "imagenet": read_imagenet}


# ---- matching -------------------------------------------------------------------------------


def match_classes(names: dict[str, list[str]], taxonomy: Taxonomy) -> tuple[dict[str, str], dict[str, str]]:
    """class key -> leaf (taxonomy spelling), and class key -> why unmatched.

    A class matches through its first name that is a leaf. Two classes on one leaf would merge
    two labels into one, so both are reported (ambiguous) instead."""
    leaves = {normalize_label(leaf): leaf for leaf in taxonomy.leaves}
    found, why = {}, {}
    for key, options in names.items():
        hit = next((leaves[normalize_label(n)] for n in options if normalize_label(n) in leaves), None)
        if hit is None:
            why[key] = "no leaf"
        else:
            found[key] = hit
    by_leaf: dict[str, list[str]] = {}
    for key, leaf in found.items():
        by_leaf.setdefault(leaf, []).append(key)
    for leaf, keys in by_leaf.items():
        if len(keys) > 1:
            for key in keys:
                del found[key]
                why[key] = f"ambiguous: {len(keys)} classes ({', '.join(keys)}) match leaf {leaf!r}"
    return found, why


def class_title(key: str, names: dict[str, list[str]], with_id: bool = False) -> str:
    """How a class is named in reports: "n01440764 (tench, Tinca tinca)", or just its name;
    `with_id` names a numbered class ("class 2 (Laysan_Albatross)"), for classes whose
    names alone would read as one."""
    options = names[key]
    if key in options or (key.isdigit() and not with_id):  # Food-101 names its classes; CUB / iNat ids say nothing
        return ", ".join(options)
    return f"{'class ' if key.isdigit() else ''}{key} ({', '.join(options)})"


def prepare(dataset: str, root: str | os.PathLike, taxonomy: Taxonomy) -> Prepared:
    """Read the official layout under `root`, match classes to `taxonomy`, build the list."""
    if dataset not in READERS:
        raise HierError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    root = Path(root).resolve()
    if not root.is_dir():
        raise HierError(f"--root {root}: no such folder")
    names, items = READERS[dataset](root)
    found, why = match_classes(names, taxonomy)
    images, left_out, splits, missing = [], Counter(), Counter(), []
    for path, key, split in items:
        if key not in found:
            left_out[key] += 1
        elif not path.is_file():
            missing.append(str(path))
        else:
            images.append({"image": str(path), "label": found[key], "split": split})
            splits[split] += 1
    # two classes titled alike (two CUB classes of one name) must stay two report lines
    titles = Counter(class_title(k, names) for k in why)
    unmatched = {f"{class_title(k, names, with_id=titles[class_title(k, names)] > 1)}: {why[k]}": left_out.get(k, 0) for k in sorted(why)}
    return Prepared(
        images=images, classes=len(names), unmatched=unmatched, splits=dict(sorted(splits.items())), missing=missing
    )


def write_image_list(images: list[dict], path: str | os.PathLike) -> None:
    """One JSON object a line (the format `read_image_list` and `hiertrain data questions` read)."""
    from hiertrain.base.atomic import atomic_path

    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="\n") as f:
        for item in images:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
